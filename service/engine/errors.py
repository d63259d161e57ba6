"""The engine's errors: rasters, tile settings and options it cannot work with, and a canceled run.

All derive from the product's root, :class:`tileseg.errors.TilesegError`, and each also inherits the builtin it
resembles. The models' errors (a model not installed, a bad checkpoint) are :mod:`tileseg.models.errors`.
"""

from __future__ import annotations

from tileseg.errors import TilesegError


class InputError(TilesegError, ValueError):
    """The input raster cannot be segmented by this model as asked."""

    code = "bad_input"


class UnreadableInputError(InputError, OSError):
    """The input is missing, empty, truncated, or not a raster GDAL can read."""

    code = "unreadable_input"


class NoRangeSupportError(UnreadableInputError):
    """A remote source whose server ignores Range requests, too large to be fetched whole."""

    code = "no_range_support"


class SourceUnavailableError(UnreadableInputError):
    """A remote source that did not answer in time, or stopped answering in the middle of a read."""

    code = "source_unavailable"


class UnsupportedFormatError(InputError):
    """GDAL reads the file, but its format is not one the product accepts."""

    code = "unsupported_format"


class BandMismatchError(InputError):
    """The input's bands do not fit the model's (after dropping alpha and applying ``--bands``)."""

    code = "band_mismatch"


class DtypeError(InputError):
    """The input's data type is not one the model accepts."""

    code = "unsupported_dtype"


class PixelSizeError(InputError):
    """The input's pixel size is unknown where the run requires it (``pixel_size_policy=strict``), or wrong."""

    code = "pixel_size"


class RoiError(InputError):
    """A region of interest that cannot be used: unreadable, empty, in another CRS, or outside the image."""

    code = "bad_roi"


class TileGeometryError(TilesegError, ValueError):
    """Tile settings that break the model's geometry (size multiple, offset) or are out of range."""

    code = "bad_tile_settings"


class TooLargeError(InputError):
    """The input has more pixels than allowed."""

    code = "too_large"


class CanceledError(TilesegError):
    """The run was canceled through its progress callback."""

    code = "canceled"


class OptionsError(TilesegError, ValueError):
    """Well-formed options that the chosen model cannot take (a prune level its architecture lacks)."""

    code = "bad_options"


__all__ = [
    "BandMismatchError",
    "CanceledError",
    "DtypeError",
    "InputError",
    "NoRangeSupportError",
    "OptionsError",
    "PixelSizeError",
    "RoiError",
    "SourceUnavailableError",
    "TileGeometryError",
    "TooLargeError",
    "UnreadableInputError",
    "UnsupportedFormatError",
]
