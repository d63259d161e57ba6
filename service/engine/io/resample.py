"""Reading an input on a virtual grid at another pixel size.

The *virtual grid* is the input seen at the model's pixel size: ``height x width`` pixels, each covering
``ry x rx`` pixels of one pyramid level of the input (``ry = level_height / height``, so the grid covers
the level exactly). Its pixel values are a function of their grid position alone, never of the window
they are read in: coarser grids average the level's pixels weighted by the area each covers (what GDAL
calls "average"), finer grids interpolate bilinearly between the level's pixel centres. Tiling runs on that
grid unchanged, so the overlap-tile exactness holds on it: the tiled result equals the whole-image result
of the network on the resampled image.

Each window is resampled as two small matrix products (rows, then columns) over the level's region under
it, so memory follows the window, as for any other read.
"""

from __future__ import annotations

import numpy as np
from affine import Affine

from tileseg.engine.io.pixelsize import MeasuredSize
from tileseg.engine.io.read import mirrored_window


def axis_weights(start: int, count: int, ratio: float, size: int) -> tuple[int, np.ndarray]:
    """The weights that make virtual pixels ``start .. start + count - 1`` of one axis from a level's pixels.

    Args:
        start, count: the virtual pixels wanted.
        ratio: level pixels per virtual pixel (above 1: area average; below 1: bilinear).
        size: the level's length on this axis.

    Returns:
        ``(first, W)``: the first level pixel used, and ``W`` of shape ``(count, n)`` whose row ``i`` weights
        level pixels ``first .. first + n - 1`` (each row sums to 1).
    """
    virtual = np.arange(start, start + count, dtype=np.float64)
    if ratio >= 1:
        lo_edge, hi_edge = virtual * ratio, np.minimum((virtual + 1) * ratio, size)
        first, last = int(np.floor(lo_edge[0])), int(np.ceil(hi_edge[-1]))
        level = np.arange(first, last, dtype=np.float64)
        overlap = np.minimum(hi_edge[:, None], level[None] + 1) - np.maximum(lo_edge[:, None], level[None])
        weights = np.clip(overlap, 0, None)
    else:
        centre = np.clip((virtual + 0.5) * ratio - 0.5, 0, size - 1)
        k0 = np.floor(centre).astype(np.intp)
        k1 = np.minimum(k0 + 1, size - 1)
        first, last = int(k0.min()), int(k1.max()) + 1
        weights = np.zeros((count, last - first))
        rows = np.arange(count)
        np.add.at(weights, (rows, k0 - first), 1 - (centre - k0))
        np.add.at(weights, (rows, k1 - first), centre - k0)
    return first, (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


class ResampledRaster:
    """An input reader (at one pyramid level) seen on a virtual grid of ``height x width`` pixels.

    It is a :class:`~tileseg.engine.io.source.RasterSource`, so the tiler reads it as it reads a file; its
    pixel size is the base's scaled to the grid, and its only level is itself.

    Args:
        base: the reader of the level to resample (its ``read_region`` and ``read_valid`` are used).
        height, width: the virtual grid's size.
    """

    def __init__(self, base, height: int, width: int):
        self.base, self.height, self.width = base, max(1, height), max(1, width)
        self.ry, self.rx = base.height / self.height, base.width / self.width
        self.scaling, self.has_mask = base.scaling, base.has_mask
        self.crs = getattr(base, "crs", None)
        transform = getattr(base, "transform", None)
        self.transform = None if transform is None else transform @ Affine.scale(self.rx, self.ry)
        self.info, self.levels = base.info, [(self.height, self.width)]
        size = base.pixel_size
        self.pixel_size = size if size.metres is None else MeasuredSize(size.metres * self.ry, size.source, size.note)

    def read_region(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """The ``(bands, height, width)`` values of an in-grid region: uint8 for uint8 input, else float32."""
        r0, wr = axis_weights(row, height, self.ry, self.base.height)
        c0, wc = axis_weights(col, width, self.rx, self.base.width)
        raw = self.base.read_region(r0, c0, wr.shape[1], wc.shape[1])
        out = wr @ raw.astype(np.float32) @ wc.T
        if raw.dtype == np.uint8:
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out.astype(np.float32)

    def read_window(self, row: int, col: int, length: int) -> np.ndarray:
        """The ``(bands, length, length)`` window at ``(row, col)`` of the grid, mirrored past its edges."""
        return mirrored_window(self.read_region, row, col, length, self.height, self.width)

    def read_valid(self, row: int, col: int, height: int, width: int) -> np.ndarray | None:
        """The validity of an in-grid region: a virtual pixel is valid when most of what it covers is."""
        if not self.has_mask:
            return None
        r0, wr = axis_weights(row, height, self.ry, self.base.height)
        c0, wc = axis_weights(col, width, self.rx, self.base.width)
        valid = self.base.read_valid(r0, c0, wr.shape[1], wc.shape[1])
        if valid is None:
            return None
        share = wr @ valid.astype(np.float32) @ wc.T
        result = share >= 0.5
        return None if result.all() else result


def nearest_index(out_size: int, grid_size: int) -> np.ndarray:
    """For each of ``out_size`` pixels, the grid pixel under its centre (grid and output cover one extent)."""
    return np.minimum(((np.arange(out_size) + 0.5) * grid_size / out_size).astype(np.intp), grid_size - 1)


__all__ = ["ResampledRaster", "axis_weights", "nearest_index"]
