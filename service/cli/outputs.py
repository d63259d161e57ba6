"""``tileseg segment``'s outputs (OUTPUT, ``--probabilities``, ``--vectors``) at ``s3://`` URLs.

A result in object storage is written here first, into a temporary folder, under the name its key ends in
(the suffix still says the format), and uploaded only once the run has succeeded (:func:`staged`), through
:func:`tileseg.objectstore.upload`: one PUT, or a multipart upload that the store shows only once whole. A run
that fails uploads nothing; an upload that fails removes the run's objects uploaded before it, so that a key
never holds a result without the others. The mask goes last: where it is, the rest is too.

A ``.zarr`` output is a folder: every object under it is uploaded below its key, the chunks first and the Zarr
metadata last (the root's last of all), so that a reader finds the image only once its chunks are there.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import click

from tileseg import objectstore
from tileseg.objectstore import S3Url

CONTENT_TYPES = {
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".gpkg": "application/geopackage+sqlite3",
    ".geojson": "application/geo+json",
    ".json": "application/geo+json",
    ".parquet": "application/vnd.apache.parquet",
}


@dataclass(frozen=True)
class Outputs:
    """Where the run writes: local paths (a temporary folder's for the ``s3://`` targets)."""

    mask: Path
    probabilities: Path | None = None
    vectors: Path | None = None


def target(text: str | None, option: str) -> S3Url | Path | None:
    """An output as given: an ``s3://bucket/key`` URL, else a local path.

    Raises:
        click.BadParameter: an ``s3://`` URL without a bucket, or whose key names a folder, not a file.
    """
    if text is None:
        return None
    if not objectstore.is_s3(text):
        return Path(text)
    try:
        url = S3Url.parse(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint=option) from None
    if not url.key or url.key.endswith("/"):
        raise click.BadParameter(
            f"{url}: give the object's key, with its file name (e.g. .../mask.tif)", param_hint=option
        )
    return url


@contextmanager
def staged(mask: str, probabilities: str | None = None, vectors: str | None = None) -> Iterator[Outputs]:
    """Local paths for the run's outputs; those at ``s3://`` URLs are uploaded when the ``with`` body returns,
    and nothing is uploaded when it raises.

    Raises:
        click.BadParameter: an ``s3://`` output that names no object (see :func:`target`).
        ObjectStoreError: an upload failed (after the store client's retries); none of this run's objects is
            left in the store.
    """
    targets = {
        "vectors": target(vectors, "--vectors"),
        "probabilities": target(probabilities, "--probabilities"),
        "mask": target(mask, "OUTPUT"),
    }
    if not any(isinstance(t, S3Url) for t in targets.values()):
        yield Outputs(**targets)  # type: ignore[arg-type]  # local paths only
        return
    with tempfile.TemporaryDirectory(prefix="tileseg-out-") as tmp:
        local: dict[str, Path | None] = {}
        for kind, where in targets.items():
            if isinstance(where, S3Url):
                local[kind] = Path(tmp) / kind / PurePosixPath(where.key).name
                local[kind].parent.mkdir()  # type: ignore[union-attr]
            else:
                local[kind] = where
        yield Outputs(**local)  # type: ignore[arg-type]
        upload_all([(local[k], t) for k, t in targets.items() if isinstance(t, S3Url)])  # type: ignore[misc]


def upload_all(pairs: list[tuple[Path, S3Url]]) -> None:
    """Upload each file to its URL, in order; when one fails, remove those already uploaded and re-raise.

    Raises:
        ObjectStoreError: the first upload that failed.
    """
    done: list[S3Url] = []
    try:
        for path, url in pairs:
            if path.is_dir():  # a Zarr
                for file, key in folder_objects(path, url):
                    objectstore.upload(file, key, "application/json" if file.name in ZARR_METADATA else None)
                    done.append(key)
            elif path.exists():  # a sink that wrote nothing (no polygons) leaves no file to upload
                objectstore.upload(path, url, CONTENT_TYPES.get(path.suffix.lower()))
                done.append(url)
    except BaseException:
        for url in done:
            try:
                objectstore.delete(url)
            except objectstore.ObjectStoreError:
                pass  # the upload's own error is the one to report
        raise


def names_zarr(output: str | Path | None) -> bool:
    """Whether an output (a path or an ``s3://`` URL) is a Zarr: it, or a folder it lies in, ends in ``.zarr``."""
    return output is not None and any(p.lower().endswith(".zarr") for p in PurePosixPath(str(output)).parts)


ZARR_METADATA = frozenset({"zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata"})


def folder_objects(folder: Path, url: S3Url) -> list[tuple[Path, S3Url]]:
    """Every file under ``folder`` with the key it goes to below ``url``: data first, then the metadata
    documents, the deepest first (the root's last)."""
    files = [f for f in folder.rglob("*") if f.is_file()]

    def order(f: Path) -> tuple[bool, int]:
        return f.name in ZARR_METADATA, -len(f.relative_to(folder).parts)

    return [(f, url.join(f.relative_to(folder).as_posix())) for f in sorted(files, key=order)]


__all__ = ["Outputs", "folder_objects", "names_zarr", "staged", "target", "upload_all"]
