"""Adding a model trained elsewhere: read it, measure its geometry, write its checkpoint and card.

Accepted: a TorchScript file, an ONNX file, or a state dict (``.safetensors``, or ``.pt``/``.pth`` read with
``weights_only=True``, so a pickle carrying code is refused) of a registry architecture, the zoo's own or
``smp:NAME`` (segmentation_models_pytorch). Nothing is written until every check has passed: the network file
first (under a temporary name, then renamed), the card last, so a failed add leaves no card.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pickle
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tileseg.models.base import SegmentationNet
from tileseg.models.checkpoint import weights_dir
from tileseg.models.errors import CheckpointError, UnknownArchitectureError
from tileseg.models.external import FORMATS, ExternalNet, OnnxNet, TorchScriptNet
from tileseg.models.probe import ProbeReport, probe
from tileseg.models.registry import build_model
from tileseg.models.spec import ModelSpec

PROBE_KEYS = ("multiple", "offset", "shrink", "halo", "equivariant", "output_scale", "fixed_window", "classes")


def sniff_format(path: Path) -> str:
    """``torchscript``, ``onnx`` or ``state_dict``, from the file's content (and suffix for ONNX).

    Raises:
        CheckpointError: no such file, or nothing a model can be read from.
    """
    if not path.is_file():
        raise CheckpointError(f"no model file at {path}")
    head = path.read_bytes()[:16]
    if path.suffix == ".safetensors":
        return "state_dict"
    if path.suffix == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        # a TorchScript archive carries its program's source under code/; torch.save's zip only data.pkl
        if any("/code/" in n or n.startswith("code/") for n in names):
            return "torchscript"
        return "state_dict"
    if head[:1] == b"\x08":  # an ONNX ModelProto starts with field 1 (ir_version), a varint
        return "onnx"
    raise CheckpointError(f"{path} is not a model file: not TorchScript, ONNX, safetensors or a torch state dict")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``.pt``/``.pth`` read with ``weights_only=True``.

    Raises:
        CheckpointError: unreadable, not a mapping of tensors, or a pickle that holds code (refused).
    """
    tensors: Any
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))
        else:
            tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects besides tensors; refused (weights_only=True loads tensors only): "
            "save model.state_dict() or a .safetensors file"
        ) from err
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError) as err:
        raise CheckpointError(f"{path} is not a readable state dict: {str(err).splitlines()[0]}") from err
    if isinstance(tensors, dict) and isinstance(tensors.get("state_dict"), dict):
        tensors = tensors["state_dict"]  # Lightning and many training scripts nest it
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{path} is not a state dict: expected a mapping of names to tensors")
    return tensors


def build_from_state_dict(path: Path, arch: str, params: dict[str, Any], bands: int, classes: int) -> SegmentationNet:
    """The registry's ``arch`` with ``params``, holding the tensors of ``path``.

    Raises:
        CheckpointError: unknown architecture, bad parameters, or missing / unexpected / misshapen keys (named).
    """
    try:
        model = build_model(arch, in_channels=bands, num_classes=classes, **params)
    except UnknownArchitectureError as err:
        raise CheckpointError(str(err)) from err
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{arch} does not take these parameters {params}: {err}") from err
    tensors = read_state_dict(path)
    target = getattr(model, "net", None) if arch.startswith("smp:") else None
    if target is not None and all(k.startswith("net.") for k in tensors):
        target = None  # already saved from our own wrapper
    module = target if target is not None else model
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = [f"{len(missing)} missing ({', '.join(missing[:4])})" if missing else "",
                 f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])})" if unexpected else ""]  # fmt: skip
        raise CheckpointError(f"{path.name} does not fit {arch}: keys {'; '.join(p for p in parts if p)}")
    wrong = [k for k in expected if tensors[k].shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        have, need = tuple(tensors[k].shape), tuple(expected[k].shape)
        raise CheckpointError(f"{path.name} does not fit {arch}: {k} has shape {have}, the architecture needs {need}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    model.hparams = dict(params)
    return model.eval()


def open_network(path: Path, fmt: str, arch: str | None, params: dict[str, Any], bands: int, classes: int):
    """The network of a file to add, on the CPU in fp32.

    Raises:
        CheckpointError: as the readers; a state dict without ``arch``; bands the ONNX input does not take.
    """
    if fmt == "torchscript":
        return TorchScriptNet(path, "cpu")
    if fmt == "onnx":
        net = OnnxNet(path, "cpu")
        if net.input_bands is not None and net.input_bands != bands:
            raise CheckpointError(f"{path.name} takes {net.input_bands} input bands, the card says {bands}")
        return net
    if not arch:
        raise CheckpointError(f"{path.name} is a state dict: name its architecture (--arch unet, --arch smp:Unet ...)")
    return build_from_state_dict(path, arch, params, bands, classes).float()


def measure(net: torch.nn.Module, bands: int, budget: float | None, log=None) -> ProbeReport:
    """The probe of a network to add (a fixed ONNX window is read from the file).

    Raises:
        ProbeError: see :func:`tileseg.models.probe.probe`.
        CheckpointError: a fixed input that is not square.
    """
    fixed = getattr(net, "fixed_size", None)
    if fixed is not None and fixed[0] != fixed[1]:
        raise CheckpointError(f"the model takes only {fixed[0]}x{fixed[1]} inputs; tiling needs square windows")
    return probe(net, bands, fixed=fixed[0] if fixed else None, budget=budget, log=log)


def add_model(
    name: str,
    path: Path,
    spec: ModelSpec,
    arch: str | None = None,
    params: dict[str, Any] | None = None,
    budget: float | None = None,
    replace_existing: bool = False,
    extra: dict[str, Any] | None = None,
    log=None,
) -> dict[str, Any]:
    """Check ``path``, measure its geometry and install it as ``name`` in the weights directory.

    Args:
        name: the installed name.
        path: the TorchScript, ONNX or state-dict file.
        spec: the card's spec as the user gave it; its geometry is replaced by the measured one.
        arch, params: a state dict's architecture (``unet``, ``smp:Unet``) and its keyword arguments.
        budget: seconds the probe may take.
        replace_existing: overwrite an installed model of that name.
        extra: further card fields (licence, provenance).
        log: called with a line per finding.

    Returns:
        The card written.

    Raises:
        CheckpointError: any check that fails (nothing is written then).
    """
    target = weights_dir()
    if not replace_existing and (target / f"{name}.json").exists():
        raise CheckpointError(f"a model named {name!r} is installed in {target}; give --replace to overwrite it")
    fmt = sniff_format(path)
    net = open_network(path, fmt, arch, dict(params or {}), spec.input.bands, spec.num_classes)
    report = measure(net, spec.input.bands, budget, log)
    if report.classes != spec.num_classes:
        raise CheckpointError(f"the model outputs {report.classes} channels, the card names {spec.num_classes} classes")
    stored = "safetensors" if fmt == "state_dict" else fmt
    hparams = dict(net.hparams) if not isinstance(net, ExternalNet) else {}
    if report.output_scale != 1:
        hparams["output_scale"] = report.output_scale
    card_arch = arch if fmt == "state_dict" else fmt
    final = replace(spec, name=name, arch=card_arch or stored, geometry=report.geometry())
    card = {"name": name, "arch": final.arch, "format": stored, "hparams": hparams, "spec": final.to_dict(),
            "probe": {**report.to_dict(), "torch": torch.__version__},
            "source": {"file": path.name, "sha256": _sha256(path)},
            "created": datetime.date.today().isoformat(), **(extra or {})}  # fmt: skip
    _write(target, name, stored, path, net, card)
    return card


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write(target: Path, name: str, stored: str, path: Path, net, card: dict[str, Any]) -> None:
    """The network's file, then the card, each written under a temporary name and renamed."""
    target.mkdir(parents=True, exist_ok=True)
    network = target / f"{name}{FORMATS[stored]}"
    partial = target / f".{name}{FORMATS[stored]}.partial"
    try:
        if stored == "safetensors":
            # fp32: the user's own weights, kept as they were trained (the zoo's are stored fp16)
            tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            save_file(tensors, str(partial))
        else:
            shutil.copyfile(path, partial)
        os.replace(partial, network)
        card_partial = target / f".{name}.json.partial"
        card_partial.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(card_partial, target / f"{name}.json")
    finally:
        partial.unlink(missing_ok=True)


def check_model(name: str, budget: float | None = None, log=None) -> tuple[ProbeReport, list[str]]:
    """Measure an installed model again; returns the report and its drifts from the card (``"halo 94 -> 96"``).

    A model without a ``probe`` record (a shipped one) is compared with its declared geometry: the measured
    halo may be smaller than the declared one, never larger.

    Raises:
        ModelNotFoundError, CheckpointError: as :func:`tileseg.models.load`; ProbeError as the probe.
    """
    from tileseg.models.checkpoint import load

    net = load(name, device="cpu").float().to(memory_format=torch.contiguous_format)
    card = net.card
    if isinstance(net, ExternalNet):
        net.output_scale = 1.0  # measure the network's own output, as when it was added
    report = measure(net, net.spec.input.bands, budget, log)
    recorded = card.get("probe")
    if recorded is None:
        geometry = net.spec.geometry
        recorded = {"multiple": geometry.multiple, "offset": geometry.offset, "shrink": geometry.shrink,
                    "halo": geometry.halo, "equivariant": geometry.equivariant,
                    "classes": net.spec.num_classes}  # fmt: skip
    drifts = []
    for key in PROBE_KEYS:
        if key not in recorded:
            continue
        was, now = recorded[key], getattr(report, key)
        if key == "halo" and "probe" not in card and now <= was:
            continue  # a declared halo may be generous; only a larger need is drift
        if was != now:
            drifts.append(f"{key} {was} -> {now}")
    return report, drifts
