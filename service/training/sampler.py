"""Training batches: random crops drawn so that the randomness of step ``t`` on process ``r`` depends only on
``(seed, r, t)``. A run that stops and resumes therefore draws the very crops it would have drawn without
stopping, and no random state has to be carried from one session to the next."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tileseg.training.augment import Augment, border_weights, sample_crop, separation_weights
from tileseg.training.config import SAMPLING
from tileseg.training.data import Dataset, DataSource, normalize
from tileseg.training.errors import TrainingConfigError


class Sampler:
    """Random training batches from a data set in memory; batch ``t`` of process ``r`` depends only on
    ``(seed, r, t)``.

    Args:
        data: the data set; crops come from its training images.
        output: the output crop side; the image crop is larger by ``2 * shrink``.
        shrink: pixels the network loses on each side.
        augment: the random transforms.
        seed, rank: the run's seed and this process's rank.
        weights: per-pixel loss weights of each training image (U-Net's border term), or None.
        by: how each crop's image is drawn: ``"area"`` or ``"image"`` (:data:`SAMPLING`).
    """

    def __init__(
        self,
        data: Dataset,
        output: int,
        shrink: int,
        augment: Augment,
        seed: int,
        rank: int,
        weights: list[np.ndarray] | None,
        by: str = "area",
    ) -> None:
        self.samples = data.train
        self.mean, self.std = data.band_stats()
        self.output, self.shrink, self.augment = output, shrink, augment
        self.seed, self.rank = seed, rank
        self.weights = weights
        if by not in SAMPLING:
            raise ValueError(f"by must be one of {', '.join(SAMPLING)}, not {by!r}")
        areas = np.array([s.label.size if by == "area" else 1 for s in self.samples], dtype=np.float64)
        self.p = areas / areas.sum()

    def batch(self, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(images (B, bands, I, I) float32, labels (B, O, O) int64, weights (B, O, O) float32 or None)``."""
        rng = np.random.default_rng((self.seed, self.rank, step))
        images, labels, weights = [], [], []
        for _ in range(size):
            k = int(rng.choice(len(self.samples), p=self.p))
            sample = self.samples[k]
            img, lab, wts = sample_crop(
                rng,
                sample.image,
                sample.label,
                self.output,
                self.shrink,
                self.augment,
                self.weights[k] if self.weights is not None else None,
            )
            images.append(normalize(img, self.mean, self.std))
            labels.append(lab)
            weights.append(wts)
        x = torch.from_numpy(np.stack(images))
        y = torch.from_numpy(np.stack(labels).astype(np.int64))
        w = torch.from_numpy(np.stack(weights)) if self.weights is not None else None
        return x, y, w


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of torch's own randomness (dropout and the like) at ``step`` on process ``rank``."""
    return int(np.random.SeedSequence((seed, rank, step, 1)).generate_state(1)[0])


def pixel_weights(
    data: Dataset, source: DataSource, w0: float, sigma: float, say: Callable[[str], None]
) -> list[np.ndarray]:
    """U-Net's border weights of every training image: between the separate regions of the data set's
    instance channel (:func:`~.augment.border_weights`, ISBI's cells), or, for a data set with instance
    labels, where touching objects meet (:func:`~.augment.separation_weights`, the nuclei).

    Raises:
        TrainingConfigError: the data set has no separable objects (neither instance labels nor an instance
            channel).
    """
    if source.read_objects is not None:
        say(f"computing separation weights (w0 {w0:g}, sigma {sigma:g}) for {len(data.train)} images")
        return [
            separation_weights(source.read_objects(pair.mask), sample.label, w0, sigma)
            for pair, sample in zip(source.train, data.train)
        ]
    if source.instance_channel is None:
        raise TrainingConfigError(
            f"--border-weight needs a data set of separable objects (two classes, or instance labels); "
            f"{source.kind} has none"
        )
    say(f"computing border weights (w0 {w0:g}, sigma {sigma:g}) for {len(data.train)} images")
    return [border_weights(s.label, source.instance_channel, w0, sigma) for s in data.train]
