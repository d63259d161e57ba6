"""Training's own errors: settings that cannot work together, data sets that do not fit. Both derive from the
product's root error and the builtin they resemble, like every other layer's."""

from __future__ import annotations

from tileseg.errors import TilesegError


class TrainingConfigError(TilesegError, ValueError):
    """Training settings that cannot work together, or that contradict the run being resumed."""

    code = "bad_training_config"


class TrainingDataError(TilesegError, ValueError):
    """A training data set is missing, incomplete, or its images and masks do not fit together."""

    code = "bad_training_data"


__all__ = ["TrainingConfigError", "TrainingDataError"]
