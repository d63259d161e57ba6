"""The engine's errors: rasters, tile settings and options it cannot work with, and a canceled run. Each
layer above keeps its own beside it (:mod:`tileseg.jobs.errors`, :mod:`tileseg.api.errors`, the viewer's in
:mod:`tileseg.viewer.render`); all derive from the one root, :class:`tileseg.models.errors.TilesegError`,
and each also inherits the builtin it resembles.

Each carries a message a user can act on; the CLI prints it (no traceback) and the HTTP layer maps the
classes to status codes through one handler (by their ``code``).
"""

from __future__ import annotations

from tileseg.models.errors import CheckpointError, ModelNotFoundError, TilesegError, UnknownArchitectureError


class InputError(TilesegError, ValueError):
    """The input raster cannot be segmented by this model as asked."""

    code = "bad_input"


class UnreadableInputError(InputError, OSError):
    """The input is missing, empty, truncated, or not a raster GDAL can read."""

    code = "unreadable_input"


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
    "CheckpointError",
    "DtypeError",
    "InputError",
    "ModelNotFoundError",
    "OptionsError",
    "PixelSizeError",
    "RoiError",
    "TileGeometryError",
    "TilesegError",
    "TooLargeError",
    "UnknownArchitectureError",
    "UnreadableInputError",
    "UnsupportedFormatError",
]
