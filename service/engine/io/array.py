"""An image already in memory, read through the same contract as a raster file.

:func:`tileseg.engine.predict_strips` reads its input through the :class:`~tileseg.engine.io.source.RasterSource`
contract. :class:`~tileseg.engine.io.read.InputRaster` serves it from a file; :class:`ArrayRaster` serves it
from a uint8 array, so that an image held in
memory (a validation image during training) is tiled, padded, scaled and stitched by the very code that
serves files, and gives the very mask ``segment()`` would write for it.
"""

from __future__ import annotations

import numpy as np

from tileseg.engine.errors import BandMismatchError, DtypeError
from tileseg.engine.io.bands import Scaling, uint8_scaling
from tileseg.engine.io.pixelsize import UNKNOWN
from tileseg.engine.io.read import RasterInfo, mirrored_window
from tileseg.models.spec import ModelSpec


class ArrayRaster:
    """A ``(bands, H, W)`` uint8 image in memory, read as :class:`~tileseg.engine.io.read.InputRaster` reads
    a file: uint8 values scaled by 255 and normalised by the spec's mean and std, the mirror padding
    reflecting without repeating the edge pixel, every pixel valid.

    Args:
        image: ``(bands, H, W)`` uint8; it is read, never written.
        spec: the model's spec (its band count, dtypes and normalisation).

    Raises:
        DtypeError: the image is not uint8, or the model does not take uint8.
        BandMismatchError: the image is not 3-D, or its band count is not the model's.
    """

    def __init__(self, image: np.ndarray, spec: ModelSpec) -> None:
        if image.dtype != np.uint8:
            raise DtypeError(f"an in-memory image must be uint8, not {image.dtype}")
        if "uint8" not in spec.input.dtypes:
            raise DtypeError(f"model {spec.name} does not take uint8 input; it takes {', '.join(spec.input.dtypes)}")
        if image.ndim != 3 or image.shape[0] != spec.input.bands:
            raise BandMismatchError(
                f"model {spec.name} takes (bands, height, width) arrays of "
                f"{spec.input.bands} band(s), not an array of shape {image.shape}"
            )
        self._image = image
        self.height, self.width = image.shape[1:]
        self.scaling: Scaling = uint8_scaling(spec)
        self.crs, self.transform, self.pixel_size, self.has_mask = None, None, UNKNOWN, False
        self.levels = [(self.height, self.width)]
        self.info = RasterInfo("array", self.width, self.height, image.shape[0], "uint8", None, "array")

    def read_window(self, row: int, col: int, length: int) -> np.ndarray:
        """The raw ``(bands, length, length)`` uint8 window whose first pixel is ``(row, col)``, a copy;
        positions outside the image are mirrored from it."""
        window = mirrored_window(self.read_region, row, col, length, self.height, self.width)
        return np.require(window, requirements=("C_CONTIGUOUS", "OWNDATA"))  # copied where it is a view

    def read_region(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """The raw ``(bands, height, width)`` uint8 values of an in-image region (a view, not a copy)."""
        return self._image[:, row : row + height, col : col + width]

    def read_valid(self, row: int, col: int, height: int, width: int) -> None:
        """None: every pixel of an array is valid (an array carries no nodata)."""
        return None
