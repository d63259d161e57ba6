"""The product's errors below the model zoo: bad rasters and options (the engine's), bad requests and jobs
(the service's). All derive from :class:`tileseg.models.errors.TilesegError`.

Each carries a message a user can act on; the CLI prints it (no traceback) and the HTTP layer maps the
classes to status codes through one handler.
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


class BadTileError(TilesegError, ValueError):
    """A tile address that is not one of the pyramid's scheme (a negative index, a level too deep)."""

    code = "bad_tile"


class TileNotFoundError(TilesegError, LookupError):
    """A valid tile address that does not touch the image."""

    code = "no_such_tile"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ---- the service's errors: requests, jobs and their results ------------------------------------------------


class RequestError(TilesegError, ValueError):
    """A request that is malformed: a missing or unparsable field, both or neither of file and source."""

    code = "bad_request"


class OptionsError(TilesegError, ValueError):
    """Well-formed options that the chosen model cannot take (a prune level its architecture lacks)."""

    code = "bad_options"


class SourceNotAllowedError(InputError, PermissionError):
    """A ``source`` path that is not a file under one of the allowed input roots."""

    code = "source_not_allowed"


class UploadTooLargeError(TooLargeError):
    """The request body carries more bytes than the server accepts."""

    code = "upload_too_large"


class AuthenticationError(TilesegError, PermissionError):
    """A missing or unknown API key."""

    code = "unauthorized"


class JobNotFoundError(TilesegError, LookupError):
    """No job with this id (or none that the caller's key may see)."""

    code = "job_not_found"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ResultNotReadyError(TilesegError, RuntimeError):
    """The job has no result yet (queued, running), or will have none (failed)."""

    code = "not_ready"


class ResultNotFoundError(TilesegError, LookupError):
    """The job exists but never makes this result (probabilities that were not asked for)."""

    code = "no_such_result"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class JobFailedError(ResultNotReadyError):
    """The job failed: it has no result, and the job's ``error`` says why."""

    code = "job_failed"


class ResultGoneError(TilesegError, FileNotFoundError):
    """The job's results expired (``TILESEG_RESULT_TTL``) or were deleted: their files are gone."""

    code = "expired"


class JobCanceledError(ResultGoneError):
    """The job was canceled: it has no result, and its files are gone."""

    code = "canceled"


class InterruptedJobError(TilesegError):
    """The worker is stopping: the job goes back to the queue (raised through the progress callback)."""

    code = "interrupted"


class LeaseLostError(TilesegError):
    """The attempt no longer holds its job: its lease ran out and the job went to another attempt. It
    stops, touches nothing of the job's, and publishes nothing (raised through the progress callback)."""

    code = "lease_lost"


__all__ = [
    "AuthenticationError",
    "BadTileError",
    "BandMismatchError",
    "CanceledError",
    "CheckpointError",
    "DtypeError",
    "InputError",
    "InterruptedJobError",
    "JobCanceledError",
    "JobFailedError",
    "JobNotFoundError",
    "LeaseLostError",
    "ModelNotFoundError",
    "OptionsError",
    "PixelSizeError",
    "RequestError",
    "ResultGoneError",
    "ResultNotFoundError",
    "ResultNotReadyError",
    "RoiError",
    "SourceNotAllowedError",
    "TileGeometryError",
    "TileNotFoundError",
    "TilesegError",
    "TooLargeError",
    "UnknownArchitectureError",
    "UnreadableInputError",
    "UnsupportedFormatError",
    "UploadTooLargeError",
]
