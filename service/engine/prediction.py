"""What the network hands the stitchers: a batch of predictions from the runner, one tile's to a stitcher.

The runner (:mod:`tileseg.engine.batches`) returns a :class:`BatchPrediction` for each batch of windows; the
pipeline takes each tile's :class:`TilePrediction` from it and gives it to a stitcher
(:mod:`tileseg.engine.stitching`). Which parts are present follows from the blend mode, never from the caller:

* crop mode: the ``labels`` of each core and, when asked for, its ``probabilities``;
* blended modes: the ``probabilities`` of the whole output window, which the stitcher weights and sums.

Labels are *channel* indices: channel ``k`` is the network's ``k``-th output. The model card says which class
index each channel stands for (``spec.classes[k].index``); that mapping is applied only when the mask is
written (:class:`tileseg.engine.sinks.MaskSink`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TilePrediction:
    """One tile's prediction.

    Attributes:
        labels: ``(n, n)`` the winning channel per pixel of the core (crop mode), or None.
        probabilities: ``(K, n, n)`` float32 per-channel probabilities of the core (crop mode) or of the whole
            output window (blended modes), or None when not asked for. A runner made for exactness checks
            (``logits=True``) puts the raw logits here.
    """

    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None


@dataclass(frozen=True)
class BatchPrediction:
    """The predictions of a batch of ``B`` windows, in the batch's order.

    Attributes:
        labels: ``(B, n, n)``, or None (see :class:`TilePrediction`).
        probabilities: ``(B, K, n, n)``, or None.

    Raises:
        ValueError: neither labels nor probabilities are given, or their batch lengths differ.
    """

    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None

    def __post_init__(self) -> None:
        lengths = {len(part) for part in (self.labels, self.probabilities) if part is not None}
        if len(lengths) != 1:
            raise ValueError("a batch prediction needs labels or probabilities, for the same number of windows")

    def __len__(self) -> int:
        part = self.labels if self.labels is not None else self.probabilities
        return 0 if part is None else len(part)

    def __getitem__(self, i: int) -> TilePrediction:
        """The prediction of the batch's ``i``-th window."""
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} of a batch of {len(self)}")
        return TilePrediction(
            labels=None if self.labels is None else self.labels[i],
            probabilities=None if self.probabilities is None else self.probabilities[i],
        )


__all__ = ["BatchPrediction", "TilePrediction"]
