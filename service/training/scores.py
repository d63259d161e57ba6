"""Validation scores from a confusion matrix (filled by :mod:`.evaluation`, which predicts through the engine).

The confusion matrix counts labelled pixels: rows are the true channel, columns the predicted one.
Pixels labelled :data:`~tileseg.training.data.IGNORE_INDEX` are not counted. From it:

* IoU of class c: ``TP / (TP + FP + FN)``; NaN when the class is neither present nor predicted.
* mIoU: the mean over the classes that have an IoU.
* pixel error: the fraction of labelled pixels predicted wrong, ``1 - trace / total``.
* majority baseline: the pixel error (and mIoU) of always answering the most frequent true class; a model
  that does not beat it has learnt nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tileseg.training.data import IGNORE_INDEX


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Counts (num_classes, num_classes) int64 of (true row, predicted column) over the labelled pixels.

    Raises:
        ValueError: the arrays differ in shape, or a labelled pixel holds a channel past ``num_classes``.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    keep = target != ignore_index
    t = target[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if t.size and (t.max() >= num_classes or t.min() < 0 or p.max() >= num_classes or p.min() < 0):
        raise ValueError(f"labels or predictions outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU of every class (float64), NaN for a class neither present nor predicted."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes that have one (NaN if none has)."""
    iou = per_class_iou(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_error(cm: np.ndarray) -> float:
    """Fraction of labelled pixels predicted wrong (NaN when nothing is labelled)."""
    total = cm.sum()
    return float(1.0 - np.trace(cm) / total) if total else float("nan")


def majority_baseline_pixel_error(cm: np.ndarray) -> float:
    """Pixel error of always predicting the most frequent true class."""
    total = cm.sum()
    return float(1.0 - cm.sum(axis=1).max() / total) if total else float("nan")


def majority_baseline_miou(cm: np.ndarray) -> float:
    """mIoU of always predicting the most frequent true class: that class scores its share of the labelled
    pixels, every other class present scores 0, classes absent from the truth have no IoU."""
    return mean_iou(np.outer(cm.sum(axis=1), np.eye(len(cm))[int(cm.sum(axis=1).argmax())]))


def summarize(cm: np.ndarray, class_names: Sequence[str]) -> dict:
    """The metrics of a confusion matrix as the model card stores them (NaN IoUs become null)."""
    iou = per_class_iou(cm)
    return {
        "per_class_iou": {name: (None if np.isnan(v) else round(float(v), 6)) for name, v in zip(class_names, iou)},
        "miou": round(mean_iou(cm), 6),
        "pixel_error": round(pixel_error(cm), 6),
        "majority_baseline_pixel_error": round(majority_baseline_pixel_error(cm), 6),
        "majority_baseline_miou": round(majority_baseline_miou(cm), 6),
        "labelled_pixels": int(cm.sum()),
    }


def agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Fraction of pixels on which two lists of masks agree."""
    equal = sum(int((x == y).sum()) for x, y in zip(a, b))
    total = sum(x.size for x in a)
    return equal / total if total else float("nan")
