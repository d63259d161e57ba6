"""Training: data set adapters, augmentation, the training loop, and validation through the engine.

``train(TrainConfig(arch="unet", data=..., dataset="isbi2012", out="weights/unet-em"))`` trains and writes a
checkpoint with its model card; ``tileseg train`` is the command-line face of it.

The modules, in the order a run meets them: :mod:`.config` (settings, completed from the saved run on
resume), :mod:`.data` (data sets), :mod:`.recipe` (what is trained:
:mod:`.network`, :mod:`.class_weights`, :mod:`.augment`), :mod:`.distributed` (torchrun), :mod:`.loop`
(the steps: :mod:`.sampler`, :mod:`.loss`, :mod:`.optimizer`, :mod:`.state`, :mod:`.stopping`), and
:mod:`.card` (the checkpoint, measured by :mod:`.evaluation` through the engine, scored by :mod:`.scores`).
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names and the modules that define them. They load on first use, so that reading the data set names
# (``tileseg train --dataset``, at every start of the command line) does not load the loop and the engine
# it validates through (0.4-0.7 s of start-up, measured on this 2-core machine).
_EXPORTS = {
    "TrainingConfigError": "tileseg.training.errors",
    "TrainingDataError": "tileseg.training.errors",
    "TrainConfig": "tileseg.training.config",
    "make_config": "tileseg.training.config",
    "IGNORE_INDEX": "tileseg.training.data",
    "DataSource": "tileseg.training.data",
    "Dataset": "tileseg.training.data",
    "Sample": "tileseg.training.data",
    "normalize": "tileseg.training.data",
    "open_source": "tileseg.training.sources",
    "Evaluation": "tileseg.training.evaluation",
    "evaluate": "tileseg.training.evaluation",
    "TrainResult": "tileseg.training.loop",
    "train": "tileseg.training.loop",
    "confusion_matrix": "tileseg.training.scores",
    "majority_baseline_pixel_error": "tileseg.training.scores",
    "mean_iou": "tileseg.training.scores",
    "per_class_iou": "tileseg.training.scores",
    "pixel_error": "tileseg.training.scores",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
