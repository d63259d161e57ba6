"""Validation metrics from a confusion matrix, and whole-image prediction to feed it.

The confusion matrix counts labelled pixels: rows are the true channel, columns the predicted one.
Pixels labelled :data:`~models.training.data.IGNORE_INDEX` are not counted. From it:

* IoU of class c: ``TP / (TP + FP + FN)``; NaN when the class is neither present nor predicted.
* mIoU: the mean over the classes that have an IoU.
* pixel error: the fraction of labelled pixels predicted wrong, ``1 - trace / total``.
* majority baseline: the pixel error (and mIoU) of always answering the most frequent true class; a model
  that does not beat it has learnt nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from tileseg.models.spec import Geometry
from tileseg.models.training.augment import mirror_window
from tileseg.models.training.data import IGNORE_INDEX, Sample, normalize


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
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


# --- prediction on whole images ------------------------------------------------------------------------

@torch.inference_mode()
def predict_image(
    model: torch.nn.Module,
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    geometry: Geometry,
    tile: int = 1024,
    device: str | torch.device = "cpu",
    autocast: torch.dtype | None = None,
) -> np.ndarray:
    """Class channel of every pixel of ``image`` (bands, H, W) uint8, as (H, W) uint8.

    The same overlap-tile rules as the serving engine, so that a card's metrics are what users get: cores
    of about ``tile`` pixels (one core when the image is smaller) on the stride grid, each predicted from a
    window enlarged by the halo and mirrored past the image border, only the core of the output kept. For
    convolutional networks this equals the whole-image prediction; for the others (transformers) give the
    default tile, so that each window is the training size, and note that the engine blends overlapping
    windows where this keeps each core whole. ``autocast`` runs the network under
    ``torch.autocast`` with that dtype (bf16, to measure its agreement with fp32).
    """
    device = torch.device(device)
    margin = geometry.halo - geometry.shrink
    _, h, w = image.shape

    def core(length: int) -> int:
        # one core fits a small image, but a transformer keeps its window whatever the image, as in the engine
        side = min(tile, length) if geometry.equivariant else tile
        return -(-side // geometry.multiple) * geometry.multiple

    core_h, core_w = core(h), core(w)
    in_h, in_w = geometry.window(core_h), geometry.window(core_w)
    out = np.empty((h, w), dtype=np.uint8)
    amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    for top in range(0, h, core_h):
        for left in range(0, w, core_w):
            window = mirror_window(image, top - geometry.halo, left - geometry.halo, in_h, in_w)
            x = torch.from_numpy(normalize(window, mean, std))[None].to(device, memory_format=torch.channels_last)
            with amp:
                logits = model(x)
            labels = logits[0, :, margin : margin + core_h, margin : margin + core_w].argmax(dim=0)
            keep_h, keep_w = min(core_h, h - top), min(core_w, w - left)
            out[top : top + keep_h, left : left + keep_w] = labels[:keep_h, :keep_w].to(torch.uint8).cpu().numpy()
    return out


def evaluate(
    model: torch.nn.Module,
    samples: Iterable[Sample],
    mean: Sequence[float],
    std: Sequence[float],
    geometry: Geometry,
    num_classes: int,
    tile: int = 1024,
    device: str | torch.device = "cpu",
    autocast: torch.dtype | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Predict every sample whole; returns the summed confusion matrix and the predicted channel maps."""
    was_training = model.training
    model.eval()
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    predictions = []
    try:
        for sample in samples:
            pred = predict_image(model, sample.image, mean, std, geometry, tile, device, autocast)
            cm += confusion_matrix(pred, sample.label, num_classes)
            predictions.append(pred)
    finally:
        model.train(was_training)
    return cm, predictions


def agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Fraction of pixels on which two lists of masks agree."""
    equal = sum(int((x == y).sum()) for x, y in zip(a, b))
    total = sum(x.size for x in a)
    return equal / total if total else float("nan")
