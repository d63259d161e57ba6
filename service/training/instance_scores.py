"""Instance metrics: how well predicted objects match true ones, as the 2018 Data Science Bowl scored them.

For one image and an IoU threshold ``t``, a predicted and a true object match when their IoU exceeds ``t``
(above 0.5 each object has at most one match); ``AP(t) = TP / (TP + FP + FN)``. The DSB score is the mean of
``AP(t)`` over ``t = 0.5, 0.55, ..., 0.95``. Scores are given per image and averaged over images (the DSB's
convention), and pooled over the data set (StarDist's ``by_image=False``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tileseg.engine.instances.decode import decode_whole
from tileseg.models.spec import ModelSpec
from tileseg.training.data import DataSource

THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def matching_ious(true: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The IoU of every overlapping (true, predicted) pair, and the numbers of true and predicted objects."""
    t_ids, t_labels = np.unique(true, return_inverse=True)
    p_ids, p_labels = np.unique(predicted, return_inverse=True)
    t_labels, p_labels = t_labels.ravel(), p_labels.ravel()
    t_area = np.bincount(t_labels, minlength=len(t_ids))
    p_area = np.bincount(p_labels, minlength=len(p_ids))
    both = (t_ids[t_labels] > 0) & (p_ids[p_labels] > 0)
    pairs, overlap = np.unique(t_labels[both] * len(p_ids) + p_labels[both], return_counts=True)
    t_of, p_of = pairs // len(p_ids), pairs % len(p_ids)
    ious = overlap / (t_area[t_of] + p_area[p_of] - overlap)
    return ious, int(np.count_nonzero(t_ids)), int(np.count_nonzero(p_ids))


def counts(true: np.ndarray, predicted: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """``(len(thresholds), 3)`` TP, FP, FN of one image."""
    ious, n_true, n_pred = matching_ious(true, predicted)
    tp = np.array([np.count_nonzero(ious > t) for t in thresholds])
    return np.stack([tp, n_pred - tp, n_true - tp], axis=1)


def precision(tally: np.ndarray) -> np.ndarray:
    """AP per threshold from TP, FP, FN (1 where an image has no object and none is predicted)."""
    tp, fp, fn = tally[..., 0], tally[..., 1], tally[..., 2]
    total = tp + fp + fn
    return np.where(total > 0, tp / np.maximum(total, 1), 1.0)


def instance_scores(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float | int]:
    """AP at IoU 0.5 and the DSB score over ``(true, predicted)`` label images: per image then averaged
    (``ap50``, ``dsb_score``) and pooled (``ap50_pooled``), with the object counts."""
    per_image = [counts(true, predicted) for true, predicted in pairs]
    if not per_image:
        raise ValueError("no images to score")
    tallies = np.stack(per_image)
    ap = precision(tallies)  # (images, thresholds)
    pooled = precision(tallies.sum(axis=0))
    return {
        "images": len(per_image),
        "true_objects": int(tallies[:, 0, 0].sum() + tallies[:, 0, 2].sum()),
        "predicted_objects": int(tallies[:, 0, 0].sum() + tallies[:, 0, 1].sum()),
        "ap50": round(float(ap[:, 0].mean()), 4),
        "dsb_score": round(float(ap.mean()), 4),
        "ap50_pooled": round(float(pooled[0]), 4),
    }


def instance_metrics(masks: Sequence[np.ndarray], spec: ModelSpec, source: DataSource) -> dict[str, Any]:
    """The card's ``instances`` metrics: the validation masks (channels, one per image of ``source.val``)
    decoded into objects as the engine decodes them, scored against the true objects, overall and per kind."""
    if spec.instances is None or source.read_objects is None:
        raise ValueError(f"{source.kind} has no instance labels, or the model no instance decoding")
    indices = np.array([c.index for c in spec.classes])
    pairs = [
        (source.read_objects(pair.mask), decode_whole(indices[mask], spec.instances))
        for pair, mask in zip(source.val, masks)
    ]
    metrics: dict[str, Any] = {"decoding": spec.to_dict()["instances"], "overall": instance_scores(pairs)}
    for kind in sorted(set(source.kinds.values())):
        chosen = [p for pair, p in zip(source.val, pairs) if source.kinds.get(pair.name) == kind]
        if chosen:
            metrics[kind] = instance_scores(chosen)
    return metrics


__all__ = ["THRESHOLDS", "counts", "instance_metrics", "instance_scores", "matching_ious", "precision"]
