"""Loss weights per class: none, given, or median frequency balancing (Eigen and Fergus 2015)."""

from __future__ import annotations

import numpy as np

from tileseg.training.data import IGNORE_INDEX
from tileseg.training.errors import TrainingConfigError


def median_frequency_weights(labels: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Median frequency balancing: ``w_c = median(f) / f_c``, where ``f_c`` is the pixel count of class c over
    the pixel count of the images in which c appears.

    A class that never appears gets weight 0 (there is nothing to weigh).
    """
    counts = np.zeros(num_classes)
    exposure = np.zeros(num_classes)
    for label in labels:
        hist = np.bincount(label.ravel(), minlength=256)[:num_classes]
        labelled = label.size - np.count_nonzero(label == IGNORE_INDEX)
        counts += hist
        exposure += np.where(hist > 0, labelled, 0)
    present = counts > 0
    freq = np.where(present, counts / np.maximum(exposure, 1), 0.0)
    median = np.median(freq[present]) if present.any() else 1.0
    return np.where(present, median / np.where(present, freq, 1.0), 0.0)


def parse_class_weights(text: str, labels: list[np.ndarray], num_classes: int) -> np.ndarray | None:
    """``none`` -> None, ``auto`` -> median frequency balancing over ``labels``, ``w1,w2,...`` -> those weights.

    Raises:
        TrainingConfigError: a list of the wrong length or with a negative or non-numeric weight.
    """
    text = text.strip().lower()
    if text == "none":
        return None
    if text == "auto":
        return median_frequency_weights(labels, num_classes)
    try:
        weights = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise TrainingConfigError(f"--class-weights takes none, auto or {num_classes} numbers, got {text!r}") from None
    if weights.shape != (num_classes,) or (weights < 0).any():
        raise TrainingConfigError(
            f"--class-weights needs {num_classes} non-negative numbers, one per class, got {text!r}"
        )
    return weights
