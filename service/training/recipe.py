"""What a run trains and how: the data, the network's geometry and crop, the loss's weights and the
augmentations, settled once before the first step, the same on every process and in every session."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tileseg.engine.errors import TileGeometryError
from tileseg.models.base import SegmentationNet
from tileseg.models.spec import ClassInfo, Geometry, InputSpec, ModelSpec
from tileseg.training.augment import Augment
from tileseg.training.class_weights import parse_class_weights
from tileseg.training.config import TrainConfig
from tileseg.training.data import Dataset, DataSource
from tileseg.training.errors import TrainingConfigError
from tileseg.training.evaluation import validation_options
from tileseg.training.network import build_network
from tileseg.training.sources import open_source


@dataclass(frozen=True, eq=False)
class Recipe:
    """A run's data and the choices that follow from its config and its network.

    Attributes:
        config: the settings.
        data: the data set in memory.
        geometry: the network's tiling geometry.
        output: the output crop side (the nearest to ``config.crop`` that the network takes).
        deep: whether the loss scores every deep-supervision head.
        class_weights: the loss weight of each class, or None.
        augment: the random transforms of a crop.
    """

    config: TrainConfig
    data: Dataset
    geometry: Geometry
    output: int
    deep: bool
    class_weights: np.ndarray | None
    augment: Augment

    @property
    def source(self) -> DataSource:
        return self.data.source

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        return self.data.classes

    @property
    def input_size(self) -> int:
        """The input crop side: the output crop and the network's shrink on each side."""
        return self.geometry.input_length(self.output)

    @property
    def warmup(self) -> int:
        return self.config.warmup_steps()

    def spec(self, precision: str = "fp32") -> ModelSpec:
        """The spec of the trained network, as its card will hold it (``precision``: the reduced precision the
        card allows)."""
        config = self.config
        geometry = self.geometry
        if config.default_tile is not None:
            geometry = dataclasses.replace(geometry, default_tile=config.default_tile)
        mean, std = self.data.band_stats()
        return ModelSpec(
            name=Path(config.out).with_suffix("").name,
            arch=config.arch,
            input=InputSpec(bands=self.data.bands, mean=tuple(mean), std=tuple(std)),
            classes=self.classes,
            geometry=geometry,
            precision=precision,
            instances=self.source.instances,
        )


def prepare(config: TrainConfig, say: Callable[[str], None]) -> tuple[Recipe, SegmentationNet]:
    """Load the data, build the untrained network and settle the recipe.

    Raises:
        TrainingDataError: the data set cannot be read.
        TrainingConfigError: the network refuses the settings, the class weights do not fit, or the
            validation tile is out of the engine's range.
    """
    data = load_data(config, say)
    net, output, deep = build_network(config, data.bands, len(data.classes), say)
    geometry = net.geometry()
    served = geometry.window(config.default_tile or geometry.default_tile)
    if not geometry.equivariant and served != geometry.input_length(output):
        say(
            f"note: {config.arch} is not translation-equivariant and will be served on windows of {served} px "
            f"(its default tile), but trains on {geometry.input_length(output)}-pixel crops: give --crop "
            f"{served}, or set the net's training size to the crop (SETR: --param img_size)"
        )
    class_weights = parse_class_weights(config.class_weights, [s.label for s in data.train], len(data.classes))
    augment = Augment(flips=config.flips, elastic=config.elastic, colour=config.colour)
    recipe = Recipe(config, data, geometry, output, deep, class_weights, augment)
    try:
        validation_options(recipe.spec(), config.eval_tile)  # refused now rather than after the training
    except TileGeometryError as err:
        raise TrainingConfigError(f"--eval-tile {config.eval_tile}: {err}") from err
    return recipe, net


def load_data(config: TrainConfig, say: Callable[[str], None]) -> Dataset:
    """The data set of ``config``, read into memory."""
    options = {}
    if config.dataset == "folder":
        options = {
            "val_fraction": config.val_fraction,
            "class_names": config.class_names,
            "license": config.data_license or "",
        }
    data = open_source(config.dataset, config.data, **options).load()
    mean, std = data.band_stats()
    say(
        f"{config.dataset}: {len(data.train)} training and {len(data.val)} validation images, "
        f"{data.bands} band(s), {len(data.classes)} classes; mean {_fmt(mean)}, std {_fmt(std)}"
    )
    return data


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
