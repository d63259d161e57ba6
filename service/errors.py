"""The engine's errors: bad rasters, bad options. All derive from :class:`models.errors.TilesegError`.

Each carries a message a user can act on; the CLI prints it (no traceback) and the HTTP layer maps the
classes to status codes through one handler.
"""

from __future__ import annotations

from models.errors import CheckpointError, ModelNotFoundError, TilesegError, UnknownArchitectureError


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


class TileGeometryError(TilesegError, ValueError):
    """Tile settings that break the model's geometry (size multiple, offset) or are out of range."""

    code = "bad_tile_settings"


class TooLargeError(InputError):
    """The input has more pixels than allowed."""

    code = "too_large"


class CanceledError(TilesegError):
    """The run was canceled through its progress callback."""

    code = "canceled"


__all__ = [
    "BandMismatchError",
    "CanceledError",
    "CheckpointError",
    "DtypeError",
    "InputError",
    "ModelNotFoundError",
    "TileGeometryError",
    "TilesegError",
    "TooLargeError",
    "UnknownArchitectureError",
    "UnreadableInputError",
    "UnsupportedFormatError",
]
