"""The reader contract: what the engine reads every input through.

A :class:`RasterSource` is a grid of pixels (``height x width``, with the ``crs`` and ``transform`` that
place it, or None for pixel-space inputs, and the ``pixel_size`` its metadata gives) read by window. The
pipeline knows only this contract; files (:class:`~tileseg.engine.io.read.InputRaster`), slides
(:class:`~tileseg.engine.io.slide.SlideRaster`), arrays in memory (:class:`~tileseg.engine.io.array.ArrayRaster`),
resampled grids (:class:`~tileseg.engine.io.resample.ResampledRaster`), a STAC item's single-band assets
stacked (:class:`~tileseg.engine.io.stack.StackedRaster`), Zarr arrays and OME-Zarr images
(:class:`~tileseg.engine.io.zarr_raster.ZarrRaster`) and regions of interest
(:class:`~tileseg.engine.roi.RoiRaster`) implement it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from tileseg.engine.io.bands import Scaling
    from tileseg.engine.io.pixelsize import MeasuredSize
    from tileseg.engine.io.read import RasterInfo


@runtime_checkable
class RasterSource(Protocol):
    """An input read by window.

    Attributes:
        height, width: the grid's size in pixels.
        crs, transform: where the grid lies on the map; None for pixel-space inputs (slides, plain images).
        pixel_size: the pixel size its metadata gives, and where from.
        levels: ``(height, width)`` of each pyramid level, the full resolution first.
        scaling: how raw values become the network's input.
        has_mask: whether :meth:`read_valid` can ever answer other than None.
        info: what the input is, as the job record and the CLI report it.
    """

    height: int
    width: int
    crs: Any
    transform: Any
    pixel_size: MeasuredSize
    levels: list[tuple[int, int]]
    scaling: Scaling
    has_mask: bool
    info: RasterInfo

    def read_window(self, row: int, col: int, length: int) -> np.ndarray:
        """The raw ``(bands, length, length)`` window whose first pixel is ``(row, col)``, mirrored past the
        grid's edges."""
        ...

    def read_region(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """The raw ``(bands, height, width)`` values of an in-grid region."""
        ...

    def read_valid(self, row: int, col: int, height: int, width: int) -> np.ndarray | None:
        """The boolean ``(height, width)`` validity of an in-grid region, or None when all of it is valid."""
        ...


__all__ = ["RasterSource"]
