"""The resumable state of a run, ``OUT.train/``: tensors in safetensors files, everything else in JSON.

``state.json`` names the step's two tensor files (the fp32 weights, and the optimizer's tensors flattened
with a JSON index) and holds the rest: the step, the wall time and sessions so far, the config, the
smoothed loss. It is written last and atomically, so a crash mid-write leaves the previous state whole.
Nothing is pickled, and no random state is kept: a step's randomness is regenerated from
``(seed, rank, step)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tileseg.training.errors import TrainingConfigError

STATE_VERSION = 1
STATE_FILE = "state.json"


@dataclass
class Tally:
    """How far a run has come: optimisation steps, wall seconds and sessions so far, and the smoothed
    training loss (None before the first step)."""

    step: int = 0
    seconds: float = 0.0
    sessions: int = 0
    loss_ema: float | None = None


def state_dir(out: str | os.PathLike) -> Path:
    """Where the resumable state of the run writing ``out`` lives: ``OUT.train/``."""
    return Path(str(Path(out).with_suffix("")) + ".train")


def saved_config(directory: Path) -> dict[str, Any] | None:
    """The config (as saved, JSON) of the run whose state is in ``directory``; None when there is none."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())["config"]


def save_state(
    directory: Path,
    step: int,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    extra: dict[str, Any],
) -> None:
    """Write the resumable state: tensors to step-numbered safetensors files, the rest to ``state.json``,
    written last and atomically, so that a crash mid-write leaves the previous state intact."""
    directory.mkdir(parents=True, exist_ok=True)
    model_file = f"model-{step:08d}.safetensors"
    optim_file = f"optimizer-{step:08d}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(directory / model_file))
    tensors, index = flatten_optimizer(optimizer.state_dict())
    save_file(tensors, str(directory / optim_file))
    state = {
        "version": STATE_VERSION,
        "step": step,
        "model": model_file,
        "optimizer": optim_file,
        "optimizer_index": index,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": "regenerated each step from (seed, rank, step): nothing to restore",
        **extra,
    }
    tmp = directory / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, directory / STATE_FILE)
    for old in directory.glob("*.safetensors"):
        if old.name not in (model_file, optim_file):
            old.unlink()


def load_state(directory: Path) -> dict[str, Any]:
    """``state.json`` of a saved run with its tensors: ``model_tensors`` (a state dict) and ``optimizer_state``.

    Raises:
        TrainingConfigError: the state is unreadable or from another version.
    """
    try:
        state = json.loads((directory / STATE_FILE).read_text())
        if state.get("version") != STATE_VERSION:
            raise TrainingConfigError(
                f"{directory} holds training state version {state.get('version')}, not {STATE_VERSION}"
            )
        state["model_tensors"] = load_file(str(directory / state["model"]))
        optimizer_tensors = load_file(str(directory / state["optimizer"]))
        state["optimizer_state"] = unflatten_optimizer(optimizer_tensors, state["optimizer_index"])
    except (OSError, ValueError, KeyError) as err:
        raise TrainingConfigError(f"cannot read the training state in {directory}: {err}") from err
    return state


def restore(
    directory: Path, resume: bool, net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> Tally | None:
    """Load a saved state into the net, optimizer and scaler; how far the run had come, or None when
    nothing is saved.

    Raises:
        TrainingConfigError: a saved run lies there but ``resume`` is off, or its state is unreadable.
    """
    if not (directory / STATE_FILE).is_file():
        return None
    if not resume:
        raise TrainingConfigError(
            f"{directory} holds a saved run: pass --resume to continue it, or remove the folder to start again"
        )
    state = load_state(directory)
    net.load_state_dict(state["model_tensors"])
    optimizer.load_state_dict(state["optimizer_state"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return Tally(
        int(state["step"]), float(state.get("seconds", 0.0)), int(state.get("sessions", 0)), state.get("loss_ema")
    )


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state dict as ``(tensors for safetensors, JSON-able index)``."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        per_param[str(pid)] = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                key = f"{pid}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                per_param[str(pid)][name] = {"tensor": key}
            else:
                per_param[str(pid)][name] = {"value": value}
    return tensors, {"param_groups": state_dict["param_groups"], "state": per_param}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], index: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer`."""
    state = {
        int(pid): {name: tensors[ref["tensor"]] if "tensor" in ref else ref["value"] for name, ref in entries.items()}
        for pid, entries in index["state"].items()
    }
    return {"state": state, "param_groups": index["param_groups"]}


def load_initial_weights(net: nn.Module, path: Path) -> None:
    """Start a new run from trained weights of the same network (``--init``) instead of random ones.

    Raises:
        TrainingConfigError: the file cannot be read, or its tensors do not fit the network.
    """
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error type, OSError or ValueError
        raise TrainingConfigError(f"--init {path}: not a readable safetensors file ({err})") from err
    expected = net.state_dict()
    wrong = sorted(set(expected) ^ set(tensors)) + [
        k for k in expected if k in tensors and tensors[k].shape != expected[k].shape
    ]
    if wrong:
        raise TrainingConfigError(
            f"--init {path}: its tensors do not fit this network (first of {len(wrong)}: {wrong[0]}); "
            "give the same architecture and --param settings it was trained with"
        )
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
