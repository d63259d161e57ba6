"""The instance decoding's parameters, chosen on training images: whether the cores are eroded first, how far an
object grows into its contour and how small an object may be.

The data set proposes a decoding (:attr:`~tileseg.training.data.DataSource.instances`); once trained, the network's
masks of a fixed share of the *training* images are decoded on a small grid of ``erode`` x ``distance`` x
``min_area`` (the distance counted past the erosion), and the point with the best AP at IoU 0.5 (the DSB score
breaking ties) replaces the proposal where it beats the proposal by
at least :data:`MARGIN`: smaller differences are noise (on the 11600-step ``unet-nuclei``, (3, 24) led (2, 16) by
0.4 points on 160 training images and trailed it by 0.2 on the validation images). Validation images never take part,
so the card's validation metrics stay held out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from tileseg.engine.instances.decode import decode_whole
from tileseg.models.base import SegmentationNet
from tileseg.models.spec import InstanceSpec
from tileseg.training.evaluation import evaluate
from tileseg.training.instance_scores import instance_scores
from tileseg.training.recipe import Recipe

ERODES = (0, 1)
DISTANCES = (1, 2, 3, 4)  # past the erosion
MIN_AREAS = (8, 12, 16, 24, 32)
CHOICE_IMAGES = 160  # training images the choice is made on, evenly spaced by name
MARGIN = 0.01  # the AP@0.5 by which a grid point must beat the proposal to replace it


def decoding_grid(
    masks: Sequence[np.ndarray], truths: Sequence[np.ndarray], proposal: InstanceSpec, class_indices: np.ndarray
) -> list[dict[str, Any]]:
    """AP@0.5 and the DSB score of every ``erode`` x ``distance`` x ``min_area`` (with the proposal's own point
    among them) on ``masks`` (channels) against the true objects ``truths``."""
    points = {(e, e + d, m) for e in ERODES for d in DISTANCES for m in MIN_AREAS} | {_point(proposal)}
    classes = [class_indices[mask] for mask in masks]
    grid = []
    for erode, distance, min_area in sorted(points):
        spec = dataclasses.replace(proposal, erode=erode, distance=distance, min_area=min_area)
        scores = instance_scores(zip(truths, (decode_whole(c, spec) for c in classes)))
        grid.append(
            {"erode": erode, "distance": distance, "min_area": min_area}
            | {"ap50": scores["ap50"], "dsb_score": scores["dsb_score"]}
        )
    return grid


def _point(spec: InstanceSpec | dict[str, Any]) -> tuple[int, int, int]:
    """(erode, distance, min_area) of a decoding or a grid point (grids recorded before the erosion have none)."""
    if isinstance(spec, InstanceSpec):
        return spec.erode, spec.distance, spec.min_area
    return spec.get("erode", 0), spec["distance"], spec["min_area"]


def best_decoding(grid: list[dict[str, Any]], proposal: InstanceSpec) -> InstanceSpec:
    """The grid's best point by AP@0.5, then the DSB score, where its AP@0.5 beats the proposal's by
    :data:`MARGIN`; else the proposal."""
    (own,) = [p for p in grid if _point(p) == _point(proposal)]
    best = max(grid, key=lambda point: (point["ap50"], point["dsb_score"]))
    if best["ap50"] < own["ap50"] + MARGIN:
        return proposal
    erode, distance, min_area = _point(best)
    return dataclasses.replace(proposal, erode=erode, distance=distance, min_area=min_area)


def choose_decoding(
    net: SegmentationNet, recipe: Recipe, proposal: InstanceSpec, images: int = CHOICE_IMAGES
) -> tuple[InstanceSpec, dict[str, Any]]:
    """The decoding for the card, chosen on ``images`` training images (see the module), and its record."""
    source = recipe.source
    if source.read_objects is None:
        raise ValueError(f"{source.kind} has no instance labels to choose a decoding on")
    step = max(1, len(source.train) // images)
    chosen = list(range(0, len(source.train), step))[:images]
    found = evaluate(net, [recipe.data.train[i] for i in chosen], tile=recipe.config.eval_tile)
    truths = [source.read_objects(source.train[i].mask) for i in chosen]
    class_indices = np.array([c.index for c in net.spec.classes])
    grid = decoding_grid(found.masks, truths, proposal, class_indices)
    best = best_decoding(grid, proposal)
    record = {
        "chosen_on": f"{len(chosen)} training images (one in {step} by name): the grid's best AP@0.5 where it beats "
        f"the proposal's by {MARGIN:g}, else the proposal",
        "proposed": dict(zip(("erode", "distance", "min_area"), _point(proposal))),
        "grid": grid,
    }
    return best, record


__all__ = [
    "CHOICE_IMAGES",
    "DISTANCES",
    "ERODES",
    "MARGIN",
    "MIN_AREAS",
    "best_decoding",
    "choose_decoding",
    "decoding_grid",
]
