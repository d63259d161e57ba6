"""Checkpoints: ``NAME.safetensors`` (tensors only, nothing is ever unpickled) beside ``NAME.json`` (the card).

A model added from outside (``tileseg models add``) may instead be a TorchScript or ONNX file,
``NAME.torchscript`` or ``NAME.onnx``; the card's ``format`` says which (``safetensors`` when absent).

The model card is a JSON object::

    {"name", "arch", "hparams": {...}, "spec": ModelSpec.to_dict(), "training": {...},
     "metrics": {...}, "license": "...", "created": "YYYY-MM-DD"}

``load`` rebuilds the architecture from ``arch`` and ``hparams`` through the registry, so a card and its
tensors must agree: a missing card, an unknown architecture or a tensor of the wrong shape is a
:class:`CheckpointError` that says which.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tileseg import weights as _shipped
from tileseg.config import engine_config
from tileseg.models.base import SegmentationNet
from tileseg.models.errors import CheckpointError, ModelNotFoundError, UnknownArchitectureError
from tileseg.models.external import FORMATS, open_external
from tileseg.models.registry import build_model
from tileseg.models.spec import ModelSpec

# The shipped checkpoints are the data-only package ``tileseg.weights`` (the repository's ``weights/``): the
# source tree, an editable install, a wheel and the Docker image all find them where the package is.
SHIPPED_WEIGHTS = Path(_shipped.__file__).resolve().parent


def weights_dir() -> Path:
    """Where installed checkpoints live: ``TILESEG_WEIGHTS_DIR``, else the shipped ``weights/``."""
    configured = engine_config().weights_dir
    return Path(configured) if configured else SHIPPED_WEIGHTS


def available(directory: Path | None = None) -> list[str]:
    """Names of the installed checkpoints (a card with a network file beside it), sorted."""
    root = Path(directory) if directory else weights_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.stem for p in root.glob("*.json") if any(p.with_suffix(suffix).is_file() for suffix in FORMATS.values())
    )


def instance_models(directory: Path | None = None) -> list[str]:
    """The installed checkpoints whose card declares an instance decoding (objects, not only classes)."""
    found = []
    for name in available(directory):
        try:
            if read_card(name if directory is None else directory / f"{name}.json").get("spec", {}).get("instances"):
                found.append(name)
        except (OSError, ValueError, CheckpointError):
            continue
    return found


def network_file(card_path: Path) -> Path:
    """The network's file beside a card: ``NAME.safetensors``, or what the card's ``format`` names (an added
    TorchScript or ONNX model). A card that cannot be read points at ``NAME.safetensors``: reading it then
    fails with the card's own error."""
    try:
        fmt = json.loads(card_path.read_text()).get("format", "safetensors")
    except (OSError, ValueError, AttributeError):
        fmt = "safetensors"
    return card_path.with_suffix(FORMATS.get(fmt, ".safetensors"))


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The network file of an installed name or of a path (the card's or the network's, or neither suffix)."""
    text = str(name_or_path)
    candidate = Path(text)
    suffixes = (".json", *FORMATS.values())
    looks_like_path = candidate.suffix in suffixes or os.sep in text or "/" in text
    if looks_like_path:
        base = candidate.with_suffix("") if candidate.suffix in suffixes else candidate
        card = Path(f"{base}.json")
        path = network_file(card) if card.is_file() else Path(f"{base}.safetensors")
        if candidate.suffix in FORMATS.values() and not card.is_file():
            path = candidate
        if not path.is_file():
            raise ModelNotFoundError(f"no checkpoint at {path}")
        return path
    card = weights_dir() / f"{text}.json"
    path = network_file(card) if card.is_file() else weights_dir() / f"{text}.safetensors"
    if not path.is_file():
        names = available()
        raise ModelNotFoundError(
            f"no installed model named {text!r} in {weights_dir()}; installed: {', '.join(names) or 'none'}"
        )
    return path


def read_card(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The model card of a checkpoint, validated enough to build its spec."""
    path = resolve(name_or_path).with_suffix(".json")
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path.with_suffix('.safetensors')} has no model card {path.name}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"model card {path} is not readable JSON: {err}") from err
    for key in ("arch", "hparams", "spec"):
        if key not in card:
            raise CheckpointError(f"model card {path} lacks {key!r}")
    try:
        ModelSpec.from_dict(card["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"model card {path} has an invalid spec: {err}") from err
    return card


def describe(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A model's catalogue entry, as ``tileseg models --json`` and ``GET /models`` show it:
    ``{"name", "arch", "bands", "classes": [{"index", "name", "color"}], ...the card's other fields}``."""
    card = read_card(name_or_path)
    spec = card["spec"]
    name = card.get("name") or resolve(name_or_path).stem
    return {
        "name": name,
        "arch": card["arch"],
        "bands": spec["input"]["bands"],
        "classes": spec["classes"],
        **{k: v for k, v in card.items() if k not in ("name", "arch")},
    }


def card_hash(name_or_path: str | os.PathLike) -> str:
    """SHA-256 of the card and the tensors together: what a result's provenance names."""
    path = resolve(name_or_path)
    digest = hashlib.sha256()
    for part in (path.with_suffix(".json"), path):
        with open(part, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def save(model: SegmentationNet, spec: ModelSpec, path: str | os.PathLike, **card_fields: Any) -> Path:
    """Write ``path.safetensors`` (fp16 floats) and ``path.json``; returns the ``.safetensors`` path.

    ``card_fields`` (training, metrics, license, ...) are added to the card as they are.
    """
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(tensors, str(path))
    card = {"name": spec.name, "arch": spec.arch, "hparams": model.hparams, "spec": spec.to_dict(), **card_fields}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", **options: Any) -> SegmentationNet:
    """Load a checkpoint as an ``nn.Module`` in eval mode on ``device``, with a typed ``.spec``.

    Args:
        name_or_path: an installed model's name, or the path of its ``.safetensors`` or ``.json`` file.
        device: where to put it.
        options: serving options the architecture takes (``prune`` for U-Net++); they override the card's.

    Raises:
        ModelNotFoundError: nothing by that name or at that path.
        CheckpointError: a missing or invalid card, an unknown architecture, or tensors that do not fit.
    """
    path = resolve(name_or_path)
    card = read_card(path)
    spec = ModelSpec.from_dict(card["spec"])
    if card.get("format", "safetensors") != "safetensors":
        return _load_external(path, card, spec, device, options)
    model = _build(path, card, spec, options)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:3]}")
        if unexpected:
            details.append(f"unexpected {unexpected[:3]}")
        if wrong:
            k = wrong[0]
            details.append(
                f"{k} has shape {tuple(tensors[k].shape)}, the {card['arch']} needs {tuple(expected[k].shape)}"
            )
        raise CheckpointError(f"{path} does not match its card ({card['arch']}): {'; '.join(details)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    model.spec = spec if not options else _with_options(spec, model, options)
    model.card = card
    model.checkpoint_path = path
    model.eval()
    return model.to(device=device, memory_format=torch.channels_last)


def card_spec(name_or_path: str | os.PathLike, **options: Any) -> ModelSpec:
    """The spec a checkpoint loads with (``load(...).spec``), from its card alone: no tensors are read.

    Serving options that change the geometry (``prune``) build the architecture on the meta device, which
    allocates no memory, to measure it. An API that only queues jobs checks requests with this.

    Raises:
        ModelNotFoundError, CheckpointError: as :func:`load`.
    """
    path = resolve(name_or_path)
    card = read_card(path)
    spec = ModelSpec.from_dict(card["spec"])
    if not options:
        return spec
    if card.get("format", "safetensors") != "safetensors":
        raise CheckpointError(f"{path.name} is a {card['format']} file: it takes no serving options ({options})")
    with torch.device("meta"):
        model = _build(path, card, spec, options)
    return _with_options(spec, model, options)


def _load_external(
    path: Path, card: dict[str, Any], spec: ModelSpec, device: str | torch.device, options: dict[str, Any]
) -> SegmentationNet:
    """A TorchScript or ONNX network with its card (see :mod:`tileseg.models.external`)."""
    if options:
        raise CheckpointError(f"{path.name} is a {card['format']} file: it takes no serving options ({options})")
    model = open_external(path, card["format"], card["hparams"], device)
    model.spec = spec
    model.card = card
    model.checkpoint_path = path
    return model.eval()


def _build(path: Path, card: dict[str, Any], spec: ModelSpec, options: dict[str, Any]) -> SegmentationNet:
    """The card's architecture with its hyper-parameters and the serving options, weights not loaded."""
    hparams = {**card["hparams"], **spec.options, **options}
    try:
        return build_model(card["arch"], in_channels=spec.input.bands, num_classes=spec.num_classes, **hparams)
    except UnknownArchitectureError as err:
        raise CheckpointError(f"model card {path.with_suffix('.json')}: {err}") from err
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"model card {path.with_suffix('.json')} has invalid hyper-parameters: {err}") from err


def _with_options(spec: ModelSpec, model: SegmentationNet, options: dict[str, Any]) -> ModelSpec:
    """The spec of a model loaded with serving options: its geometry follows the options (a pruned U-Net++
    needs less context), its default tile and blend mode stay the card's."""
    geometry = replace(model.geometry(), default_tile=spec.geometry.default_tile, blend=spec.geometry.blend)
    return replace(spec, geometry=geometry, options={**spec.options, **options})
