"""Training: data set adapters, augmentation, the training loop and validation metrics.

``train(TrainConfig(arch="unet", data=..., dataset="isbi2012", out="weights/unet-em"))`` trains and writes a
checkpoint with its model card; ``tileseg train`` is the command-line face of it.
"""

from tileseg.models.training.data import IGNORE_INDEX, DataSource, Dataset, Sample, TrainingDataError, normalize, open_source
from tileseg.models.training.loop import TrainConfig, TrainingConfigError, TrainResult, make_config, train
from tileseg.models.training.metrics import confusion_matrix, majority_baseline_pixel_error, mean_iou, per_class_iou, pixel_error

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
