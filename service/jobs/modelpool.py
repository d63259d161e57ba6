"""The models a worker serves, loaded once and kept: one pool per device.

A pool loads its models when it is made (the app's lifespan, or a queue worker's start) and hands the same
network to every job. Serving variants (a U-Net++ pruned to level L) are the same checkpoint built another
way; each is loaded on first use and kept too.

An API that only queues jobs (queue mode) runs no network: its :class:`CardCatalogue` reads the model
cards, which is all that checking a request and answering ``GET /models`` need.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tileseg import models
from tileseg.models.spec import ModelSpec

from tileseg.errors import CheckpointError, ModelNotFoundError, OptionsError
from tileseg.engine.runtime import pick_device

log = logging.getLogger(__name__)


class ModelPool:
    """Loaded models by name, on one device.

    Args:
        weights_dir: where the checkpoints are (``NAME.safetensors`` + ``NAME.json``).
        names: the models to load; empty: every installed one.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ModelNotFoundError: a name that is not installed.
        CheckpointError: a checkpoint that does not load.
    """

    def __init__(self, weights_dir: Path, names: list[str] | None = None, device: str = "auto"):
        self.weights_dir = Path(weights_dir)
        self.device = pick_device(device)
        wanted = _wanted(self.weights_dir, names)
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, int | None], nn.Module] = {}
        for name in wanted:
            self._loaded[(name, None)] = self._load(name, None)
        self.names = wanted

    def _load(self, name: str, prune: int | None) -> nn.Module:
        options = {"prune": prune} if prune is not None else {}
        model = models.load(self.weights_dir / f"{name}.safetensors", device=self.device, **options)
        log.info("loaded %s%s on %s", name, f" (prune {prune})" if prune else "", self.device)
        return model

    def get(self, name: str, prune: int | None = None) -> nn.Module:
        """The network for ``name`` (pruned to ``prune`` when given).

        Raises:
            ModelNotFoundError: the pool does not serve ``name``.
            OptionsError: the model cannot be served with this prune level.
        """
        if (name, None) not in self._loaded:
            served = ", ".join(self.names) or "none"
            raise ModelNotFoundError(f"no model named {name!r} is served here; served: {served}")
        key = (name, prune)
        with self._lock:
            if key not in self._loaded:
                try:
                    self._loaded[key] = self._load(name, prune)
                except CheckpointError as err:
                    raise OptionsError(f"model {name} cannot run with prune={prune}: {err}") from err
            return self._loaded[key]

    def spec(self, name: str, prune: int | None = None) -> ModelSpec:
        """The spec of ``name`` as served with ``prune``."""
        return self.get(name, prune).spec

    def describe(self, name: str) -> dict[str, Any]:
        """The catalogue entry, exactly as ``tileseg models --json`` prints it."""
        self.get(name)
        return models.describe(self.weights_dir / f"{name}.safetensors")

    def close(self) -> None:
        """Drop the networks (and the GPU memory they hold)."""
        with self._lock:
            self._loaded.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class CardCatalogue:
    """The models' cards, read once, with the same lookups as :class:`ModelPool` but no weights loaded.

    Args:
        weights_dir: where the checkpoints are.
        names: the models to offer; empty: every installed one.

    Raises:
        ModelNotFoundError: a name that is not installed.
        CheckpointError: a card that does not read.
    """

    def __init__(self, weights_dir: Path, names: list[str] | None = None):
        self.weights_dir = Path(weights_dir)
        self.names = _wanted(self.weights_dir, names)
        self._lock = threading.Lock()
        self._specs: dict[tuple[str, int | None], ModelSpec] = {
            (name, None): models.card_spec(self.weights_dir / f"{name}.safetensors") for name in self.names}

    def spec(self, name: str, prune: int | None = None) -> ModelSpec:
        """The spec of ``name`` as served with ``prune``.

        Raises:
            ModelNotFoundError: ``name`` is not offered here.
            OptionsError: the model cannot be served with this prune level.
        """
        if (name, None) not in self._specs:
            served = ", ".join(self.names) or "none"
            raise ModelNotFoundError(f"no model named {name!r} is served here; served: {served}")
        key = (name, prune)
        with self._lock:
            if key not in self._specs:
                try:
                    self._specs[key] = models.card_spec(self.weights_dir / f"{name}.safetensors", prune=prune)
                except CheckpointError as err:
                    raise OptionsError(f"model {name} cannot run with prune={prune}: {err}") from err
            return self._specs[key]

    def describe(self, name: str) -> dict[str, Any]:
        """The catalogue entry, exactly as ``tileseg models --json`` prints it."""
        self.spec(name)
        return models.describe(self.weights_dir / f"{name}.safetensors")

    def close(self) -> None:
        """Nothing to free: no network was loaded."""


def _wanted(weights_dir: Path, names: list[str] | None) -> list[str]:
    installed = models.available(weights_dir)
    wanted = list(names) if names else installed
    missing = [n for n in wanted if n not in installed]
    if missing:
        raise ModelNotFoundError(f"model(s) {', '.join(missing)} are not installed in {weights_dir}; "
                                 f"installed: {', '.join(installed) or 'none'}")
    return wanted


__all__ = ["CardCatalogue", "ModelPool"]
