"""Training: data set adapters, augmentation, the training loop and validation metrics.

``train(TrainConfig(arch="unet", data=..., dataset="isbi2012", out="weights/unet-em"))`` trains and writes a
checkpoint with its model card; ``tileseg train`` is the command-line face of it.

The modules, in the order a run meets them: :mod:`.config` (settings, completed from the saved run on
resume), :mod:`.params` (``--param`` values), :mod:`.data` (data sets), :mod:`.recipe` (what is trained:
:mod:`.network`, :mod:`.class_weights`, :mod:`.augment`), :mod:`.distributed` (torchrun), :mod:`.loop`
(the steps: :mod:`.sampler`, :mod:`.loss`, :mod:`.optimizer`, :mod:`.state`, :mod:`.stopping`), and
:mod:`.card` (the checkpoint, measured and scored by :mod:`.metrics`).
"""

from tileseg.models.errors import TrainingConfigError, TrainingDataError
from tileseg.models.training.config import TrainConfig, make_config
from tileseg.models.training.data import IGNORE_INDEX, DataSource, Dataset, Sample, normalize, open_source
from tileseg.models.training.loop import TrainResult, train
from tileseg.models.training.metrics import (
    confusion_matrix,
    majority_baseline_pixel_error,
    mean_iou,
    per_class_iou,
    pixel_error,
)

__all__ = [
    "IGNORE_INDEX",
    "DataSource",
    "Dataset",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "TrainingConfigError",
    "TrainingDataError",
    "confusion_matrix",
    "majority_baseline_pixel_error",
    "make_config",
    "mean_iou",
    "normalize",
    "open_source",
    "per_class_iou",
    "pixel_error",
    "train",
]
