"""The errors of a run over many inputs (:mod:`tileseg.cohorts`): each says which input or which search went
wrong, in one line, before anything is written under the output folder."""

from __future__ import annotations

from tileseg.errors import TilesegError


class CohortError(TilesegError):
    """Root of the errors of a run over many inputs."""

    code = "bad_cohort"


class NoInputsError(CohortError, ValueError):
    """An INPUT that names nothing to segment: an empty folder, a glob that matches nothing, an empty list, an
    ``s3://`` prefix with no raster under it, a search that found no item."""

    code = "no_inputs"


class MissingInputError(CohortError, FileNotFoundError):
    """An INPUT, or a line of an ``@list``, that names a file or folder that does not exist."""

    code = "missing_input"


class CatalogError(CohortError, ValueError):
    """A STAC document that cannot be read as an item, an ItemCollection or a catalog."""

    code = "bad_catalog"


class UnknownCollectionError(CohortError, LookupError):
    """A ``--collections`` name the STAC API does not have (the message lists those it has)."""

    code = "unknown_collection"


class StacApiError(CohortError, ConnectionError):
    """A STAC API that does not answer, answers with an error, or lacks what the search asks for."""

    code = "stac_api_unavailable"


class OutDirBusyError(CohortError, BlockingIOError):
    """Another run is writing into the same ``--out-dir``."""

    code = "out_dir_busy"


__all__ = [
    "CatalogError",
    "CohortError",
    "MissingInputError",
    "NoInputsError",
    "OutDirBusyError",
    "StacApiError",
    "UnknownCollectionError",
]
