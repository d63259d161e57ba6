"""Prediction of an image held in memory, through the same overlap-tile computation as ``segment()``.

An :class:`~tileseg.engine.io.ArrayRaster` serves the array's windows (mirror-padded, scaled and normalised
as a file's are), :func:`~tileseg.engine.tile_settings` picks the tiles as ``segment()`` does (by default the
model's default tile evened out over the image, and its default blend), a
:class:`~tileseg.engine.batches.BatchRunner` runs the batches in the given runtime, and
:func:`~tileseg.engine.predict_strips` stitches the rows. There is no second tiler: the mask that
``segment(..., SegmentOptions(precision="fp32", compile="off"))`` writes for an image and the one returned
here are one computation (training validates with it, so that a model card's metrics are what is served).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tileseg.engine import SegmentOptions, predict_strips, tile_settings
from tileseg.engine.batches import BatchRunner
from tileseg.engine.io import ArrayRaster
from tileseg.engine.runtime.runtimes import BASELINE, Runtime
from tileseg.engine.tiling import TileSettings
from tileseg.models.base import SegmentationNet


@dataclass(frozen=True)
class ArrayPrediction:
    """What :func:`predict_array` computed for one image.

    Attributes:
        labels: ``(H, W)`` the winning output channel per pixel (a channel, not yet the card's class index).
        probabilities: ``(K, H, W)`` float32 per channel, or None when not asked for.
        settings: the tile settings used.
        runtime: what ran; eager fp32 when the runtime asked for failed and the engine fell back to it.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    settings: TileSettings
    runtime: Runtime


def predict_array(
    model: SegmentationNet,
    image: np.ndarray,
    options: SegmentOptions = SegmentOptions(),
    runtime: Runtime = BASELINE,
    probabilities: bool = False,
) -> ArrayPrediction:
    """Predict an in-memory image with ``segment()``'s own tiling.

    Args:
        model: a network with a ``.spec`` (as :func:`tileseg.models.load` gives), on its device, in eval mode.
        image: ``(bands, H, W)``, of a dtype the model's spec accepts.
        options: tiling options (``tile``, ``blend``, ``overlap``, ``batch``) and ``tta``, as ``segment()`` takes
            them.
        runtime: the precision and memory format to run in (eager fp32 by default).
        probabilities: also return the per-channel probabilities.

    Returns:
        The labels, the probabilities if asked for, the tile settings and the runtime that ran.

    Raises:
        DtypeError, BandMismatchError: the image does not fit the model.
        TileGeometryError: options the model's geometry refuses.
    """
    spec = model.spec
    raster = ArrayRaster(image, spec)
    settings = tile_settings(spec, options, (raster.height, raster.width))
    device = next(model.parameters()).device
    runner = BatchRunner(model, settings, raster.scaling, device, runtime, options.tta, probabilities)
    labels = probs = None
    # reading windows of an array in memory costs next to nothing: one thread keeps the network fed
    for strip in predict_strips(runner, raster, readers=1):
        if labels is None:
            labels = np.empty((raster.height, raster.width), strip.labels.dtype)
            probs = np.empty((spec.num_classes, *labels.shape), np.float32) if probabilities else None
        rows = slice(strip.y, strip.y + strip.height)
        labels[rows] = strip.labels
        if probs is not None:
            probs[:, rows] = strip.probabilities
    if labels is None:  # an image has at least one row, so at least one strip: never, unless the stitcher breaks
        raise RuntimeError("the engine produced no rows for a non-empty image")
    return ArrayPrediction(labels, probs, settings, runner.runtime)


__all__ = ["ArrayPrediction", "predict_array"]
