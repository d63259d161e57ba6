"""INPUTs as a list of named sources: what ``tileseg segment INPUT... --out-dir DIR`` runs.

Each INPUT is one of:

* a file (a raster or a slide), or a ``.zarr`` folder: itself;
* a folder: the rasters and slides in it (:data:`RASTER_SUFFIXES`), in its sub-folders too with ``recursive``;
* a glob (``scenes/*.tif``, ``**`` with ``recursive``): the files it matches;
* ``@list.txt``: a path or URL a line, each expanded as an INPUT (relative paths against the list's folder;
  blank lines and ``#`` comments skipped);
* an ``s3://bucket/prefix/``: the rasters under the prefix (an ``s3://`` URL of one object: that object);
* an ``http(s)://`` URL of a raster: itself;
* a STAC Item, ItemCollection, Catalog or Collection (a ``.json`` file or URL): its items
  (:mod:`tileseg.cohorts.catalogs`).

Every source gets a name, the folder its outputs go to: the file's stem, or the STAC item's id, made safe for a
file name. Names are compared without case (two names that differ only in case would collide on macOS and
Windows); where several sources share one, each gets a short hash of its full input appended, so a name depends
only on the inputs themselves, never on their order. An INPUT that names nothing raises at once, before
anything is written.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tileseg import objectstore
from tileseg.cohorts.catalogs import engine_item, items_of, read_document
from tileseg.cohorts.errors import MissingInputError, NoInputsError
from tileseg.engine.io.stac import StacItem
from tileseg.urls import mask_url

RASTER_SUFFIXES = frozenset(
    {".tif", ".tiff", ".jp2", ".png", ".jpg", ".jpeg", ".img", ".zarr"}  # rasters (and Zarr folders)
    | {".svs", ".ndpi", ".scn", ".mrxs", ".bif", ".vms", ".svslide"}  # slides OpenSlide reads
)
RESERVED = frozenset({"manifest.jsonl", "manifest"})  # names beside the outputs' folders
GLOB_CHARS = re.compile(r"[*?\[]")
HASH_LENGTH = 8


@dataclass(frozen=True)
class Source:
    """One input of the run.

    Attributes:
        name: the folder under ``--out-dir`` its outputs go to (unique in the run).
        location: the path or URL as given (a STAC item's: where it was read from).
        item: a STAC item read from a collection, a catalog or a search, handed to the engine as it is.
    """

    name: str
    location: str
    item: StacItem | None = None

    @property
    def shown(self) -> str:
        """The input for the manifest and messages: a URL masked (no token or signature reaches a file)."""
        where = mask_url(self.location) if "://" in self.location else self.location
        return f"{where}#{self.item.id}" if self.item is not None else where  # several items share a document

    @property
    def key(self) -> str:
        """The full input (URL unmasked, item id appended): what tells two sources apart."""
        return f"{self.location}#{self.item.id}" if self.item is not None else self.location

    def opened(self) -> str | StacItem:
        """What the engine opens: the item, else the path or URL."""
        return self.item if self.item is not None else self.location


def expand(inputs: list[str], recursive: bool = False, search: dict[str, Any] | None = None) -> list[Source]:
    """The sources that ``inputs`` name, then the items a STAC API's ``search`` finds (the keyword arguments of
    :func:`~tileseg.cohorts.stac_search.search_items`), in order, duplicates removed, each with its unique name.

    Raises:
        NoInputsError: an INPUT that names nothing (an empty folder, list or prefix; a glob matching nothing).
        MissingInputError: a file, folder or list that does not exist, or a list's line naming one.
        CatalogError, StacApiError: a STAC document that cannot be read; a STAC API that does not answer.
        UnknownCollectionError: a search's collection the API lacks.
        ObjectStoreError: an ``s3://`` prefix that cannot be listed.
    """
    found: list[Source] = []
    for text in inputs:
        found.extend(_expand_one(text, recursive, where=text))
    if search is not None:
        found.extend(searched(**search))
    unique: dict[str, Source] = {}
    for source in found:
        unique.setdefault(source.key, source)
    return name_uniquely(list(unique.values()))


def searched(api_url: str, **terms: Any) -> list[Source]:
    """The items of a STAC API's search as sources (:func:`~tileseg.cohorts.stac_search.search_items`)."""
    from tileseg.cohorts.stac_search import search_items

    terms = {"collections": None, "bbox": None, "datetime": None, "query": None, "max_items": None, **terms}
    items = [engine_item(item) for item in search_items(api_url, **terms)]
    return [Source(stem(item.id), item.location or api_url, item) for item in items]


def _expand_one(text: str, recursive: bool, where: str) -> list[Source]:
    """The sources of one INPUT (``where`` says, for messages, where it was written)."""
    if text.startswith("@"):
        return _expand_list(Path(text[1:]), recursive)
    if objectstore.is_s3(text):
        return _expand_s3(text)
    if "://" in text:
        if _path_of(text).lower().endswith(".json"):
            return _expand_document(text)
        return [Source(stem(_path_of(text)), text)]
    path = Path(text)
    if path.suffix.lower() == ".json" and path.is_file():
        return _expand_document(text)
    if path.is_dir() and path.suffix.lower() != ".zarr":
        return _expand_folder(path, recursive)
    if path.exists():
        return [Source(stem(path.name), text)]
    if GLOB_CHARS.search(text):
        matches = sorted(m for m in glob.glob(text, recursive=recursive) if _is_raster(Path(m)))
        if not matches:
            raise NoInputsError(f"{where}: the pattern matches no raster or slide")
        return [Source(stem(Path(m).name), m) for m in matches]
    raise MissingInputError(f"{where}: no such file or folder")


def _expand_list(path: Path, recursive: bool) -> list[Source]:
    if not path.is_file():
        raise MissingInputError(f"@{path}: no such list file")
    sources = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        entry = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not entry:
            continue
        if "://" not in entry and not entry.startswith("@") and not os.path.isabs(entry):
            entry = str(path.parent / entry)
        sources.extend(_expand_one(entry, recursive, where=f"@{path}, line {number} ({mask_url(entry)})"))
    if not sources:
        raise NoInputsError(f"@{path}: the list names no input")
    return sources


def _expand_folder(folder: Path, recursive: bool) -> list[Source]:
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in folder.glob(pattern) if _is_raster(p) and not _inside_zarr(p, folder))
    if not files:
        hint = "" if recursive else " (--recursive looks into its sub-folders)"
        raise NoInputsError(f"{folder}: the folder holds no raster or slide{hint}")
    return [Source(stem(p.name), str(p)) for p in files]


def _expand_s3(text: str) -> list[Source]:
    url = objectstore.S3Url.parse(text)
    if url.key and not url.key.endswith("/") and Path(url.key).suffix.lower() in RASTER_SUFFIXES:
        return [Source(stem(Path(url.key).name), text)]
    prefix = url if not url.key or url.key.endswith("/") else objectstore.S3Url(url.bucket, url.key + "/")
    keys = [k for k in objectstore.keys(prefix) if Path(k.key).suffix.lower() in RASTER_SUFFIXES - {".zarr", ".mrxs"}]
    if not keys:
        raise NoInputsError(f"{prefix}: no raster under this prefix")
    return [Source(stem(Path(k.key).name), k.url) for k in keys]


def _expand_document(location: str) -> list[Source]:
    doc = read_document(location)
    if doc.get("type") == "Feature":
        items_of(location, doc)  # checked now: an unreadable item fails here, not mid-run
        return [Source(stem(str(doc.get("id") or Path(_path_of(location)).stem)), location)]
    return [Source(stem(item.id), item.location or location, item) for item in items_of(location, doc)]


def _is_raster(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES and (path.is_file() or path.suffix.lower() == ".zarr")


def _inside_zarr(path: Path, root: Path) -> bool:
    return any(part.lower().endswith(".zarr") for part in path.relative_to(root).parts[:-1])


def _path_of(url: str) -> str:
    return urlsplit(url).path


def stem(name: str) -> str:
    """A name fit for a folder: the file name without its suffix, other characters than letters, digits, ``.``,
    ``_`` and ``-`` replaced by ``_``, and no leading dot."""
    base = Path(name).name
    for suffix in sorted(RASTER_SUFFIXES | {".json"}, key=len, reverse=True):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return safe[:120] or "input"


def name_uniquely(sources: list[Source]) -> list[Source]:
    """``sources`` with names unique without case: each member of a group that shares one (or takes a reserved
    name) gets ``-`` and the first hex digits of the SHA-256 of its full input appended."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, source in enumerate(sources):
        groups[source.name.lower()].append(index)
    renamed = list(sources)
    for key, members in groups.items():
        if len(members) > 1 or key in RESERVED:
            for index in members:
                source = sources[index]
                digest = hashlib.sha256(source.key.encode()).hexdigest()[:HASH_LENGTH]
                renamed[index] = replace(source, name=f"{source.name}-{digest}")
    return renamed


__all__ = ["RASTER_SUFFIXES", "Source", "expand", "name_uniquely", "searched", "stem"]
