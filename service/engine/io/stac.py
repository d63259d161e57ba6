"""STAC Items as inputs: one asset of an item, or several single-band assets stacked into one input.

A `STAC Item <https://github.com/radiantearth/stac-spec>`_ is a JSON document (a GeoJSON Feature) that
lists the files of one scene as *assets*, each with an ``href`` (absolute, or relative to the item) and, for
multispectral data, the bands it holds with their ``common_name`` (``red``, ``green``, ``blue``, ``nir``, ...:
STAC 1.0's ``eo:bands``, STAC 1.1's ``bands`` with ``eo:common_name``). An item is read from a local file, an
``s3://`` object or an ``http(s)://`` URL; its assets then go through the same readers as any other raster
(:mod:`.read`, :mod:`.remote`).

Two ways to take an input from an item:

* ``asset``: one asset (``visual``, the item's true-colour image, when none is named) read as a raster,
  with ``bands`` numbers selecting within it as for any file;
* ``bands`` as common names (``red,green,blue``): the single-band assets of those names, in that order,
  stacked into one input on ONE grid, the finest of them (:mod:`.stack`: coarser assets, Sentinel-2's 20 m
  bands beside its 10 m ones, are interpolated bilinearly onto it; the assets must cover one extent).

Nothing here checks where an href points: the service does, for every asset of an item, before anything is
read (:func:`tileseg.jobs.intake.resolve_source`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from tileseg.engine.errors import BandMismatchError, InputError, UnreadableInputError
from tileseg.engine.io.remote import RemoteUrl, configure_remote_reads, http_get, parse_remote
from tileseg.urls import mask_url

ITEM_MAX_BYTES = 8 * 1024**2  # a STAC item is a few kB; refuse to hold a "item" of gigabytes in memory
DEFAULT_ASSET = "visual"
PIN = "#sha256="  # an item URL pinned to the content that was checked: url#sha256=<hex>


@dataclass(frozen=True)
class StacAsset:
    """One asset of an item.

    Attributes:
        key: its name in the item's ``assets``.
        href: where it lies, made absolute against the item's location (a path or a URL).
        common_names: the ``common_name`` of each band it declares (None where a band has none).
        media_type: its ``type``, if given.
    """

    key: str
    href: str
    common_names: tuple[str | None, ...] = ()
    media_type: str | None = None

    def describe(self) -> str:
        names = [n for n in self.common_names if n]
        return f"{self.key} ({', '.join(names)})" if names else self.key


@dataclass(frozen=True)
class StacItem:
    """A STAC Item's id and assets, as read from ``location`` (a path or URL).

    Attributes:
        digest: the SHA-256 of the item's bytes, with which a server pins what it checked (:data:`PIN`).
    """

    id: str
    location: str
    assets: dict[str, StacAsset] = field(default_factory=dict)
    digest: str = ""

    @property
    def name(self) -> str:
        """The name the input is reported under: the item's id."""
        return self.id

    def asset_list(self) -> str:
        """The assets, with their common names, for messages."""
        return ", ".join(a.describe() for a in self.assets.values()) or "none"

    def asset(self, key: str | None) -> StacAsset:
        """The asset ``key``, or :data:`DEFAULT_ASSET` when None.

        Raises:
            InputError: no such asset (the message lists the item's assets).
        """
        wanted = key or DEFAULT_ASSET
        if wanted not in self.assets:
            how = f"has no asset {wanted!r}" if key else f"has no {DEFAULT_ASSET!r} asset: choose one with --asset"
            raise InputError(
                f"STAC item {self.id} {how}, or bands by common name with --bands (e.g. red,green,blue); "
                f"its assets: {self.asset_list()}"
            )
        return self.assets[wanted]

    def by_common_names(self, names: tuple[str, ...]) -> list[StacAsset]:
        """The single-band assets whose band's common name is each of ``names``, in that order (an asset's
        key also matches, for items that declare no common names).

        Raises:
            BandMismatchError: a name no single-band asset has, or one that several have (the message lists
                the common names the item declares).
        """
        chosen = []
        for name in names:
            found = [a for a in self.assets.values() if len(a.common_names) == 1 and a.common_names[0] == name]
            found = found or [a for a in self.assets.values() if a.key.lower() == name]
            if len(found) != 1:
                why = "no single-band asset has" if not found else f"{len(found)} assets have"
                declared = sorted({n for a in self.assets.values() for n in a.common_names if n})
                raise BandMismatchError(
                    f"STAC item {self.id}: {why} the common name {name!r}; its common names: "
                    f"{', '.join(declared) or 'none'}; its assets: {self.asset_list()}"
                )
            chosen.append(found[0])
        return chosen


@dataclass(frozen=True)
class StacSource:
    """What to read of an item: one ``asset`` (default :data:`DEFAULT_ASSET`), or the assets of the common
    names ``names`` stacked."""

    item: StacItem
    asset: str | None = None
    names: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return self.item.name

    def assets(self) -> list[StacAsset]:
        """The assets read, in band order.

        Raises:
            InputError, BandMismatchError: see :meth:`StacItem.asset` and :meth:`StacItem.by_common_names`.
        """
        if self.names:
            if self.asset:
                raise InputError("give --asset or band names in --bands, not both")
            return self.item.by_common_names(self.names)
        return [self.item.asset(self.asset)]


def is_item_name(source: object) -> bool:
    """Whether ``source`` names a STAC item by its name: a path or URL whose path ends in ``.json``."""
    if isinstance(source, StacSource | StacItem):
        return True
    if not isinstance(source, str | os.PathLike | RemoteUrl):
        return False
    text = source.url if isinstance(source, RemoteUrl) else os.fspath(source)
    path = urlsplit(text).path if "://" in text else text
    return path.lower().endswith(".json")


def read_item(location: str | os.PathLike | RemoteUrl, hop=None) -> StacItem:
    """The STAC item at ``location``: a local path, an ``s3://`` URL, or an ``http(s)://`` URL (redirects
    followed through ``hop``, see :func:`~tileseg.engine.io.remote.http_get`). A URL that ends in
    ``#sha256=<hex>`` is read without following redirects and must have that digest.

    Raises:
        UnreadableInputError: missing, unreachable, too large, not JSON, not an item, or changed since pinned.
    """
    text = location.url if isinstance(location, RemoteUrl) else os.fspath(location)
    url, _, pinned = text.partition(PIN)
    remote = parse_remote(url)
    if remote is None:
        data = _read_local(Path(url))
    elif remote.scheme == "s3":
        data = _read_s3(url)
    else:
        data, url = _read_http(url, hop, pinned)
    digest = hashlib.sha256(data).hexdigest()
    if pinned and pinned != digest:
        raise UnreadableInputError(f"STAC item {mask_url(url)} changed since it was checked: submit it again")
    return parse_item(data, url, digest)


def _read_local(path: Path) -> bytes:
    if not path.is_file():
        raise UnreadableInputError(f"{path}: no such file")
    if path.stat().st_size > ITEM_MAX_BYTES:
        raise UnreadableInputError(f"{path.name}: more than {ITEM_MAX_BYTES} bytes: not a STAC item")
    return path.read_bytes()


def _read_s3(url: str) -> bytes:
    from tileseg.objectstore import ObjectStoreError, S3Url, stream

    data = bytearray()
    try:
        for chunk in stream(S3Url.parse(url)):
            data += chunk
            if len(data) > ITEM_MAX_BYTES:
                raise UnreadableInputError(f"{mask_url(url)}: more than {ITEM_MAX_BYTES} bytes: not a STAC item")
    except ObjectStoreError as err:
        raise UnreadableInputError(f"STAC item {err}") from err
    return bytes(data)


def _read_http(url: str, hop, pinned: str) -> tuple[bytes, str]:
    def refuse(target: str) -> None:
        raise UnreadableInputError(f"STAC item {mask_url(url)}: redirected, and a checked item is read in place")

    final, data = http_get(url, ITEM_MAX_BYTES, refuse if pinned else hop)
    return data, final


def parse_item(data: bytes, location: str, digest: str = "") -> StacItem:
    """A :class:`StacItem` from the JSON ``data`` read at ``location`` (hrefs made absolute against it).

    Raises:
        UnreadableInputError: not JSON, or not a STAC Item (a Feature with assets).
    """
    shown = mask_url(location) if "://" in location else Path(location).name
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableInputError(f"{shown} is not JSON, so not a STAC item: {err}") from err
    if not isinstance(doc, dict) or doc.get("type") != "Feature" or not isinstance(doc.get("assets"), dict):
        raise UnreadableInputError(f"{shown} is not a STAC Item (a GeoJSON Feature with `assets`)")
    assets = {}
    for key, entry in doc["assets"].items():
        if isinstance(entry, dict) and isinstance(entry.get("href"), str):
            names = tuple(_common_name(band) for band in _bands(entry))
            assets[str(key)] = StacAsset(str(key), absolute_href(entry["href"], location), names, entry.get("type"))
    return StacItem(str(doc.get("id") or Path(urlsplit(location).path).stem), location, assets, digest)


def _bands(asset: dict[str, Any]) -> list[dict[str, Any]]:
    """An asset's bands: STAC 1.1's ``bands``, else the eo extension's ``eo:bands`` (STAC 1.0)."""
    bands = asset.get("bands", asset.get("eo:bands"))
    return [b for b in bands if isinstance(b, dict)] if isinstance(bands, list) else []


def _common_name(band: dict[str, Any]) -> str | None:
    name = band.get("eo:common_name", band.get("common_name"))
    return name.lower() if isinstance(name, str) else None


def absolute_href(href: str, location: str) -> str:
    """``href`` made absolute against the item's ``location``: a URL joined to the item's URL (``s3://``
    included), a path joined to the item's folder; an absolute URL as it is."""
    if "://" in href:
        if href.lower().startswith("file://") and "://" not in location:
            return urlsplit(href).path
        return href
    if "://" not in location:
        return str(Path(location).parent / href) if not os.path.isabs(href) else href
    parts = urlsplit(location)
    if parts.scheme.lower() in ("http", "https"):
        return urljoin(location, href)
    folder = posixpath.dirname(parts.path)
    return f"{parts.scheme}://{parts.netloc}{posixpath.normpath(posixpath.join(folder, href))}"


def asset_location(asset: StacAsset) -> Path | RemoteUrl:
    """Where GDAL reads ``asset`` from: a local path, or a remote raster (with the remote reads configured).

    Raises:
        UnreadableInputError: an href of a scheme that is not read (``ftp:``, ``file:`` in a remote item).
    """
    remote = parse_remote(asset.href)
    if remote is None:
        return Path(asset.href)
    configure_remote_reads()
    return remote


__all__ = [
    "DEFAULT_ASSET",
    "PIN",
    "StacAsset",
    "StacItem",
    "StacSource",
    "absolute_href",
    "asset_location",
    "is_item_name",
    "parse_item",
    "read_item",
]
