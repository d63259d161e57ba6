"""Validation through the serving engine, so that a model card's metrics are what ``segment()`` gives.

Each validation image goes whole, from memory, through :func:`tileseg.engine.arrays.predict_array`: the
engine's own overlap-tile prediction, with the tiles ``segment()`` picks. There is no second tiler: the
served mask of an image, written by ``segment(..., SegmentOptions(precision="fp32", compile="off"))``, and the
mask scored here are one computation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tileseg.engine import SegmentOptions, tile_settings
from tileseg.engine.arrays import predict_array
from tileseg.engine.errors import TileGeometryError
from tileseg.engine.options import MAX_TILE
from tileseg.engine.runtime.runtimes import BASELINE, Runtime
from tileseg.engine.tiling import TileSettings
from tileseg.models.base import SegmentationNet
from tileseg.models.spec import ModelSpec
from tileseg.training.data import Sample
from tileseg.training.scores import confusion_matrix

BF16 = Runtime("bf16")  # bf16 autocast, channels_last, eager: what the card's agreement figure measures


@dataclass
class Evaluation:
    """The outcome of validating a network on a list of images.

    Attributes:
        confusion: ``(K, K)`` int64 counts of (true channel, predicted channel) over labelled pixels.
        masks: the predicted channel of every pixel, one ``(H, W)`` array per image.
        settings: the tile settings of each image.
        options: the options the settings came from (a tile, or the served defaults).
        runtime: what ran; eager fp32 when the runtime asked for failed and the engine fell back to it.
    """

    confusion: np.ndarray
    masks: list[np.ndarray]
    settings: list[TileSettings]
    options: SegmentOptions
    runtime: Runtime

    def describe(self, device: torch.device) -> str:
        """How the masks were computed, in words, for the model card."""
        tiles = sorted({(s.core, s.window) for s in self.settings})
        cores = " or ".join(f"cores of {core} px (windows of {window} px)" for core, window in tiles)
        blends = ", ".join(sorted({s.blend.value for s in self.settings}))
        chosen = "by default" if self.options.tile is None else f"with --tile {self.options.tile}"
        return (
            f"the engine's overlap-tile prediction (tileseg.engine.predict_strips) on each whole image, "
            f"tile settings as segment() takes them {chosen}: {cores}, {blends} blend, mirror-padded; "
            f"{self.runtime.label} on {device.type}"
        )


class _Served(SegmentationNet):
    """A network with the spec the engine reads, the network itself untouched (a net in training has none)."""

    def __init__(self, net: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.net = net
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def validation_options(spec: ModelSpec, tile: int | None = None) -> SegmentOptions:
    """The options that validation tiles with: the served defaults, or cores of ``tile`` pixels rounded up to
    the network's stride.

    Raises:
        TileGeometryError: the tile is out of the engine's range.
    """
    if tile is None:
        return SegmentOptions()
    multiple = spec.geometry.multiple
    core = -(-tile // multiple) * multiple
    if not 0 < core <= MAX_TILE:
        raise TileGeometryError(
            f"validation tile {tile} is out of range: give a core between {multiple} and {MAX_TILE}"
        )
    options = SegmentOptions(tile=core)
    tile_settings(spec, options)  # the engine's own checks, raised here rather than in the first image
    return options


def evaluate(
    model: SegmentationNet,
    samples: Iterable[Sample],
    spec: ModelSpec | None = None,
    runtime: Runtime = BASELINE,
    tile: int | None = None,
) -> Evaluation:
    """Predict every sample whole through the engine and count the confusion matrix.

    Args:
        model: the network, on the device to run on; left in the training mode it came in.
        samples: images with their labels (channels, :data:`~.data.IGNORE_INDEX` where unknown).
        spec: the spec to serve it with; default ``model.spec``.
        runtime: the precision and memory format to run in (eager fp32 by default).
        tile: the core side, rounded up to the stride (``segment --tile``); None: the served default.

    Raises:
        TileGeometryError: ``tile`` is out of the engine's range.
    """
    spec = spec if spec is not None else model.spec
    served = model if getattr(model, "spec", None) is spec else _Served(model, spec)
    options = validation_options(spec, tile)
    cm = np.zeros((spec.num_classes, spec.num_classes), dtype=np.int64)
    masks, settings, ran = [], [], runtime
    was_training = model.training
    model.eval()
    try:
        for sample in samples:
            found = predict_array(served, sample.image, options, runtime)
            cm += confusion_matrix(found.labels, sample.label, spec.num_classes)
            masks.append(found.labels)
            settings.append(found.settings)
            ran = found.runtime if found.runtime != runtime else ran
    finally:
        model.train(was_training)
    return Evaluation(cm, masks, settings, options, ran)
