"""Writing an OME-Zarr image: full-width rows in, in order, a complete image with its pyramid out, or nothing.

A :class:`ZarrImageWriter` is the Zarr counterpart of :class:`tileseg.engine.io.write.StripWriter`: rows go into
level ``0`` of a Zarr group in a temporary folder beside the target, one row of chunks at a time (memory: one
chunk row of the image's width); :meth:`ZarrImageWriter.close` writes the pyramid, each level made from the one
above it one chunk row at a time (the mode of each 2x2 block for class indices, so no class is invented at a
boundary; the mean for probabilities), then the NGFF metadata (:func:`tileseg.engine.io.ngff.image_attributes`);
:meth:`ZarrImageWriter.commit` renames the folder into place, :meth:`ZarrImageWriter.discard` removes it.

zarr-python writes the format: Zarr v3 with NGFF 0.5 (the default), or Zarr v2 with NGFF 0.4 (for the labels
of an NGFF 0.4 image).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.engine.io.ngff import image_attributes
from tileseg.engine.io.zarr_store import METADATA

CHUNK = 512  # rows and columns of a chunk: the GeoTIFF's block size, and the size past which levels are made

Reduce = Callable[[np.ndarray], np.ndarray]  # (bands, 2h, 2w) -> (bands, h, w)


def mode_2x2(block: np.ndarray) -> np.ndarray:
    """The most frequent of each 2x2 block's four values (ties to the earliest of top-left, top-right,
    bottom-left, bottom-right): the value a class-index mask keeps at half the resolution."""
    quads = np.stack([block[:, 0::2, 0::2], block[:, 0::2, 1::2], block[:, 1::2, 0::2], block[:, 1::2, 1::2]])
    counts = sum((quads == quads[j]).astype(np.uint8) for j in range(4))
    best = np.argmax(counts, axis=0)  # the first of the most frequent
    return np.take_along_axis(quads, best[None], axis=0)[0]


def mean_2x2(block: np.ndarray) -> np.ndarray:
    """The rounded mean of each 2x2 block (for probabilities)."""
    total = block[:, 0::2, 0::2].astype(np.uint32) + block[:, 0::2, 1::2] + block[:, 1::2, 0::2] + block[:, 1::2, 1::2]
    return ((total + 2) // 4).astype(block.dtype)


class ZarrImageWriter:
    """Writes the full-width rows of one image, in order, as an OME-Zarr image at ``path``.

    Args:
        path: the image's folder (``mask.zarr``, or ``image.ome.zarr/labels/NAME``).
        shape: ``(bands, height, width)``; one band is written as a 2-D ``(y, x)`` array.
        dtype: the values' data type.
        fill: the arrays' fill value (the mask's nodata: GDAL reads it as nodata too).
        reduce: how a level is made from the one above (:func:`mode_2x2` or :func:`mean_2x2`).
        version: ``0.5`` (Zarr v3) or ``0.4`` (Zarr v2).
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype, fill: int, reduce: Reduce, version: str = "0.5"):
        import zarr

        self.path, self.bands, self.reduce, self.version, self.fill = Path(path), shape[0], reduce, version, fill
        self.axes = ("y", "x") if shape[0] == 1 else ("c", "y", "x")
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp.zarr")
        self.group = zarr.open_group(self.tmp, mode="w", zarr_format=2 if version == "0.4" else 3)
        self.arrays = [self._create("0", shape[1:], dtype)]
        self._pending: list[np.ndarray] = []
        self._pending_rows = self._next_row = 0

    def _create(self, name: str, size: tuple[int, int], dtype):
        shape = size if self.bands == 1 else (self.bands, *size)
        chunks = (CHUNK, CHUNK) if self.bands == 1 else (1, CHUNK, CHUNK)
        if self.version == "0.4":  # Zarr v2 names dimensions as xarray does, which GDAL reads too
            array = self.group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=self.fill)
            array.attrs["_ARRAY_DIMENSIONS"] = list(self.axes)
            return array
        return self.group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, fill_value=self.fill, dimension_names=self.axes
        )

    def write_rows(self, rows: np.ndarray) -> None:
        """Append ``(bands, n, width)`` rows; each full row of chunks is written at once."""
        self._pending.append(rows)
        self._pending_rows += rows.shape[1]
        if self._pending_rows >= CHUNK:
            data = np.concatenate(self._pending, axis=1)
            cut = data.shape[1] - data.shape[1] % CHUNK
            self._write(data[:, :cut])
            rest = data[:, cut:]
            self._pending, self._pending_rows = ([rest] if rest.shape[1] else []), rest.shape[1]

    def _write(self, data: np.ndarray) -> None:
        rows = slice(self._next_row, self._next_row + data.shape[1])
        _put(self.arrays[0], rows, data)
        self._next_row += data.shape[1]

    def close(self, metres: float | None, metadata: dict[str, Any], label: dict[str, Any] | None = None) -> None:
        """Write the last rows, the pyramid and the NGFF metadata (``metres``: level 0's pixel size)."""
        if self._pending_rows:
            self._write(np.concatenate(self._pending, axis=1))
            self._pending, self._pending_rows = [], 0
        while max(_size(self.arrays[-1])) > CHUNK:
            height, width = _size(self.arrays[-1])
            level = self._create(str(len(self.arrays)), (-(-height // 2), -(-width // 2)), self.arrays[0].dtype)
            _halve(self.arrays[-1], level, self.reduce)
            self.arrays.append(level)
        shapes = [tuple(int(n) for n in a.shape) for a in self.arrays]
        self.group.attrs.update(image_attributes(self.version, self.axes, shapes, metres, metadata, label))

    def commit(self) -> None:
        """Rename the finished image into place (an earlier Zarr there is replaced, as a GeoTIFF would be)."""
        if self.path.exists():
            shutil.rmtree(self.path)
        self.tmp.rename(self.path)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _size(array) -> tuple[int, int]:
    return int(array.shape[-2]), int(array.shape[-1])


def _put(array, rows: slice, data: np.ndarray) -> None:
    if array.ndim == 2:
        array[rows, :] = data[0]
    else:
        array[:, rows, :] = data


def _get(array, rows: slice) -> np.ndarray:
    return np.asarray(array[rows, :])[None] if array.ndim == 2 else np.asarray(array[:, rows, :])


def _halve(source, target, reduce: Reduce) -> None:
    """Write ``target`` (half ``source``'s size, rounded up) from ``source``, one row of chunks at a time; an odd
    last row or column is repeated, so the edge keeps its own values."""
    height, _ = _size(target)
    for first in range(0, height, CHUNK):
        rows = min(CHUNK, height - first)
        block = _get(source, slice(2 * first, 2 * (first + rows)))
        pad_rows, pad_cols = 2 * rows - block.shape[1], 2 * _size(target)[1] - block.shape[2]
        if pad_rows or pad_cols:
            block = np.pad(block, ((0, 0), (0, pad_rows), (0, pad_cols)), mode="edge")
        _put(target, slice(first, first + rows), reduce(block))


def is_zarr_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding Zarr metadata (which a run may replace)."""
    return path.is_dir() and any((path / name).is_file() for name in METADATA)


__all__ = ["CHUNK", "ZarrImageWriter", "is_zarr_folder", "mean_2x2", "mode_2x2"]
