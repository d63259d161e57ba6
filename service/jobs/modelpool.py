"""The models a server or a worker serves, read once and kept: which models are installed, and their lookups.

A :class:`ModelPool` loads the networks on one device when it is made (the app's lifespan, or a queue
worker's start) and hands the same network to every job. An API that only queues jobs (queue mode) runs
no network: its :class:`CardCatalogue` reads the model cards, which is all that checking a request and
answering ``GET /models`` need. Both are :class:`ServedModels`: the same names, the same lookups, the same
errors, and serving variants (a U-Net++ pruned to level L, the same checkpoint built another way) each read
on first use and kept too.

:func:`served_names` is the one check that the models asked for are installed; the command line runs it
too, to refuse to start a server or a worker without them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from tileseg import models
from tileseg.engine.errors import OptionsError
from tileseg.engine.runtime.device import pick_device
from tileseg.models.errors import CheckpointError, ModelNotFoundError
from tileseg.models.spec import ModelSpec
from tileseg.settings import Settings

log = logging.getLogger(__name__)

Entry = TypeVar("Entry")  # what is kept per (name, prune): a loaded network, or a spec read from a card


def weights_folder(settings: Settings) -> Path:
    """Where the settings' checkpoints are: ``TILESEG_WEIGHTS_DIR``, else the shipped ``weights/``."""
    return settings.weights_dir or models.weights_dir()


def served_names(weights_dir: Path, names: list[str] | None = None) -> list[str]:
    """The models to serve from ``weights_dir``: ``names``, or every installed one when none are named.

    Raises:
        ModelNotFoundError: a named model is not installed, or no model is.
    """
    installed = models.available(weights_dir)
    wanted = list(names) if names else installed
    missing = [n for n in wanted if n not in installed]
    if missing:
        raise ModelNotFoundError(
            f"model(s) {', '.join(missing)} are not installed in {weights_dir}; "
            f"installed: {', '.join(installed) or 'none'}"
        )
    if not installed:
        raise ModelNotFoundError(f"no model is installed in {weights_dir}")
    return wanted


class ServedModels(Generic[Entry]):
    """Served models by name, each read once and kept; subclasses say what is read (:meth:`_read`).

    Args:
        weights_dir: where the checkpoints are (``NAME.json`` and the network's file beside it).
        names: the models to serve; empty: every installed one.

    Raises:
        ModelNotFoundError: a name that is not installed, or none installed.
        CheckpointError: a checkpoint or card that does not read.
    """

    def __init__(self, weights_dir: Path, names: list[str] | None = None):
        self.weights_dir = Path(weights_dir)
        self.names = served_names(self.weights_dir, names)
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, int | None], Entry] = {(name, None): self._read(name) for name in self.names}

    def _read(self, name: str, prune: int | None = None) -> Entry:
        raise NotImplementedError

    def _path(self, name: str) -> Path:
        return self.weights_dir / f"{name}.json"  # the card names the network's file (models.resolve)

    def _entry(self, name: str, prune: int | None) -> Entry:
        """What is kept for ``name`` with ``prune``, read now if it was not yet.

        Raises:
            ModelNotFoundError: ``name`` is not served here.
            OptionsError: the model cannot be served with this prune level.
        """
        if (name, None) not in self._kept:
            served = ", ".join(self.names) or "none"
            raise ModelNotFoundError(f"no model named {name!r} is served here; served: {served}")
        key = (name, prune)
        with self._lock:
            if key not in self._kept:
                try:
                    self._kept[key] = self._read(name, prune)
                except CheckpointError as err:
                    raise OptionsError(f"model {name} cannot run with prune={prune}: {err}") from err
            return self._kept[key]

    def spec(self, name: str, prune: int | None = None) -> ModelSpec:
        """The spec of ``name`` as served with ``prune``.

        Raises:
            ModelNotFoundError: ``name`` is not served here.
            OptionsError: the model cannot be served with this prune level.
        """
        raise NotImplementedError

    def describe(self, name: str) -> dict[str, Any]:
        """The catalogue entry, exactly as ``tileseg models --json`` prints it.

        Raises:
            ModelNotFoundError: ``name`` is not served here.
        """
        self._entry(name, None)
        return models.describe(self._path(name))

    def runtime(self, name: str) -> dict[str, Any] | None:
        """How ``name`` runs here with default options (runtime, tile, window, batch, rate), once measured on
        this machine; None before, or where no network is loaded here (queue mode: the workers choose)."""
        return None

    def close(self) -> None:
        """Drop what was read."""
        with self._lock:
            self._kept.clear()


class ModelPool(ServedModels[nn.Module]):
    """Loaded networks by name, on one device.

    Args:
        weights_dir: where the checkpoints are.
        names: the models to load; empty: every installed one.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch, memory: the server's batch (None: the tuner's) and memory budget, as its jobs run.

    Raises:
        ModelNotFoundError, CheckpointError: as :class:`ServedModels`.
        OptionsError: an unknown device, or CUDA where there is none.
    """

    def __init__(
        self,
        weights_dir: Path,
        names: list[str] | None = None,
        device: str = "auto",
        batch: int | None = None,
        memory: str | None = None,
    ):
        self.device = pick_device(device)
        self.batch, self.memory = batch, memory
        super().__init__(weights_dir, names)

    @classmethod
    def of(cls, settings: Settings, device: str) -> ModelPool:
        """The pool of the settings' models on ``device``."""
        return cls(weights_folder(settings), settings.models, device, settings.batch, settings.memory_budget)

    def _read(self, name: str, prune: int | None = None) -> nn.Module:
        options = {"prune": prune} if prune is not None else {}
        model = models.load(self._path(name), device=self.device, **options)
        log.info("loaded %s%s on %s", name, f" (prune {prune})" if prune else "", self.device)
        return model

    def runtime(self, name: str) -> dict[str, Any] | None:
        from tileseg.engine.options import SegmentOptions
        from tileseg.engine.runtime.tuner import known_choice

        choice = known_choice(self._entry(name, None), SegmentOptions(batch=self.batch, memory=self.memory))
        return choice.summary() if choice is not None else None

    def get(self, name: str, prune: int | None = None) -> nn.Module:
        """The network for ``name`` (pruned to ``prune`` when given).

        Raises:
            ModelNotFoundError: the pool does not serve ``name``.
            OptionsError: the model cannot be served with this prune level.
        """
        return self._entry(name, prune)

    def spec(self, name: str, prune: int | None = None) -> ModelSpec:
        return self.get(name, prune).spec

    def close(self) -> None:
        """Drop the networks (and the GPU memory they hold)."""
        super().close()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class CardCatalogue(ServedModels[ModelSpec]):
    """The models' cards, read once, with the same lookups as :class:`ModelPool` but no weights loaded.

    Args and raises: as :class:`ServedModels`.
    """

    @classmethod
    def of(cls, settings: Settings) -> CardCatalogue:
        """The cards of the settings' models."""
        return cls(weights_folder(settings), settings.models)

    def _read(self, name: str, prune: int | None = None) -> ModelSpec:
        options = {"prune": prune} if prune is not None else {}
        return models.card_spec(self._path(name), **options)

    def spec(self, name: str, prune: int | None = None) -> ModelSpec:
        return self._entry(name, prune)


__all__ = ["CardCatalogue", "ModelPool", "ServedModels", "served_names", "weights_folder"]
