"""int8 for a trained model: calibrate on its own training images, measure on its validation split, record.

``tileseg models quantize NAME`` runs :func:`quantize_model`: the model's export is calibrated on fixed crops
of its training images (:data:`CROPS` crops of :data:`CROP_CORE` px cores, drawn with seed :data:`SEED`,
normalised as the engine normalises them), which gives the activation ranges of its int8 program
(:mod:`tileseg.engine.runtime.quantized`). The int8 masks of the validation split are then compared with fp32's,
both through the engine (:func:`tileseg.training.evaluation.evaluate`), as the card's ``bf16_agreement`` was
measured; int8 is allowed only where its agreement is at least bf16's (the bar). The card records it all:

- ``metrics.int8_agreement``: the share of validation pixels where the int8 and fp32 masks agree (the lowest
  over the int8 runtimes installed here, ONNX Runtime and OpenVINO; each one's in ``int8.by_runtime``);
- ``int8``: ``allowed``, ``agreement``, ``bar``, ``calibration`` (what the ranges were computed from) and
  ``ranges`` (the calibration itself, so that serving needs no training data);
- ``spec.int8``: true where allowed (what the engine reads; absent otherwise, as on cards made before).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.engine.runtime.export import export_onnx, onnx_path
from tileseg.engine.runtime.quantized import SETTINGS, calibrate
from tileseg.engine.runtime.runtimes import Runtime, exported_modes
from tileseg.models import checkpoint
from tileseg.models.base import SegmentationNet
from tileseg.training.data import DataSource, load_pair, normalize
from tileseg.training.errors import TrainingDataError
from tileseg.training.evaluation import BF16, Evaluation, evaluate
from tileseg.training.scores import agreement
from tileseg.training.sources import open_source

CROPS = 32  # calibration crops: the ranges of unet-aerial moved by under 1 % from 16 to 32 crops
CROP_CORE = 256  # each crop's core; its window adds the model's halo
SEED = 0
EVAL_TILE = 1024  # the validation tiling of the shipped cards' metrics ("cores of at most 1024 px")
# the data set folders of ../shared/data by adapter name
DATA_FOLDERS = {"dubai": "dubai_aerial", "isbi2012": "isbi2012", "dsb2018": "dsb2018_nuclei"}


def data_folder(card: dict[str, Any], root: Path | None) -> tuple[str, Path]:
    """The adapter and folder of the card's data set: ``root`` if given, else its folder under
    ``$TILESEG_SHARED_DATA`` (default ``../shared/data``).

    Raises:
        TrainingDataError: a card that names no known data set.
    """
    kind = (card.get("data") or {}).get("dataset") or (card.get("training") or {}).get("data")
    if kind not in DATA_FOLDERS and root is None:
        raise TrainingDataError(
            f"the card names no data set this command knows ({kind!r}; known: {', '.join(DATA_FOLDERS)}): "
            "give --data with its training images"
        )
    if root is not None:
        return str(kind or "folder"), root
    shared = Path(os.environ.get("TILESEG_SHARED_DATA") or Path("..") / "shared" / "data")
    return str(kind), shared / DATA_FOLDERS[str(kind)]


def calibration_batches(model: SegmentationNet, source: DataSource, crops: int = CROPS) -> Iterator[np.ndarray]:
    """``crops`` windows (a core of :data:`CROP_CORE` and the model's halo), one a batch, from the training
    images in turn at positions drawn with :data:`SEED`; mirror-padded where an image is smaller."""
    spec = model.spec
    window = calibration_window(model)
    rng = np.random.default_rng(SEED)
    images: dict[int, np.ndarray] = {}
    for i in range(crops):
        index = i % len(source.train)
        if index not in images:
            images[index] = load_pair(source.train[index], source.lut, source.read_label).image
        image = images[index]
        pad = [(0, 0)] + [(0, max(0, window - n)) for n in image.shape[1:]]
        image = np.pad(image, pad, mode="reflect") if any(p[1] for p in pad) else image
        y = int(rng.integers(0, image.shape[1] - window + 1))
        x = int(rng.integers(0, image.shape[2] - window + 1))
        yield normalize(image[:, y : y + window, x : x + window], spec.input.mean, spec.input.std)[None]


def calibration_window(model: SegmentationNet) -> int:
    """The side of each calibration crop: the model's window for a :data:`CROP_CORE` core (or its fixed one)."""
    geometry = model.spec.geometry
    return geometry.fixed_window if geometry.fixed_window is not None else geometry.window(CROP_CORE)


def int8_runtimes() -> list[Runtime]:
    """The int8 runtimes installed here: ONNX Runtime's first (the reference), then OpenVINO's."""
    import torch

    return [Runtime("int8", False, mode) for mode in exported_modes(torch.device("cpu")) if mode != "tensorrt"]


def quantize_model(
    name: str,
    root: Path | None = None,
    crops: int = CROPS,
    say: Callable[[str], None] = print,
    runtimes: list[Runtime] | None = None,
) -> dict[str, Any]:
    """Calibrate ``name``'s int8 program, measure its agreement with fp32 and record it in the card.

    Args:
        name: an installed model's name, or the path of its card or weights.
        root: the training data's folder (default: :func:`data_folder`'s).
        crops: calibration crops.
        say: where progress lines go.
        runtimes: the int8 runtimes to measure (default: every one installed, :func:`int8_runtimes`).

    Returns:
        The card's new ``int8`` record (without its ranges).

    Raises:
        TrainingDataError: no training data, or a validation split that is not the card's.
        RuntimeError: no int8 runtime installed, or an int8 run that fell back to fp32.
    """
    path = checkpoint.resolve(name)
    card = checkpoint.read_card(path)
    runtimes = runtimes if runtimes is not None else int8_runtimes()
    if not runtimes:
        raise RuntimeError("int8 runs in ONNX Runtime or OpenVINO, and neither is installed")
    kind, folder = data_folder(card, root)
    source = open_source(kind, folder)
    model = checkpoint.load(path)
    program = onnx_path(model)
    if not program.is_file():
        export_onnx(model, program)
    say(f"{name}: calibrating on {crops} crops of its {kind} training images")
    ranges = calibrate(program, calibration_batches(model, source, crops))
    val = validation_samples(card, source)
    model.card = {**card, "int8": {"ranges": ranges}}  # what the engine quantizes from, before it is written
    say(f"{name}: measuring fp32 and int8 on {len(val)} validation images")
    fp32 = evaluate(model, val, tile=EVAL_TILE)
    found = {r.mode: _agreement(model, val, fp32, r) for r in runtimes}
    bar = (card.get("metrics") or {}).get("bf16_agreement")
    if bar is None:  # a card without it: measured here, the same way
        bar = round(agreement(fp32.masks, evaluate(model, val, runtime=BF16, tile=EVAL_TILE).masks), 6)
    record = {
        "allowed": min(found.values()) >= bar,
        "agreement": min(found.values()),
        "bar": bar,
        "by_runtime": found,
        "calibration": {
            "data": f"{kind} training split, {source.split}",
            "crops": crops,
            "window": calibration_window(model),
            "seed": SEED,
            "method": "min-max",
            **SETTINGS,
        },
    }
    _write_card(path, card, record, ranges)
    return record


def validation_samples(card: dict[str, Any], source: DataSource) -> list:
    """The validation images of ``source`` in memory, checked to be the ones the card lists.

    Raises:
        TrainingDataError: the data's validation split is not the card's.
    """
    names = [p.name for p in source.val]
    listed = (card.get("data") or {}).get("val_images")
    if listed and sorted(listed) != sorted(names):
        raise TrainingDataError(f"the data's validation split ({len(names)} images) is not the card's ({len(listed)})")
    return [load_pair(p, source.lut, source.read_label) for p in source.val]


def _agreement(model: SegmentationNet, val: list, fp32: Evaluation, runtime: Runtime) -> float:
    found = evaluate(model, val, runtime=runtime, tile=EVAL_TILE)
    if found.runtime != runtime:
        raise RuntimeError(f"int8 in {runtime.mode} failed (the engine fell back to {found.runtime.label})")
    return round(agreement(fp32.masks, found.masks), 6)


def _write_card(path: Path, card: dict[str, Any], record: dict[str, Any], ranges: dict[str, list[float]]) -> None:
    """The card with its int8 record, ``metrics.int8_agreement`` and ``spec.int8``, written in place
    (to a temporary name, then renamed)."""
    spec = {k: v for k, v in card["spec"].items() if k != "int8"}
    if record["allowed"]:
        spec["int8"] = True
    updated = {
        **card,
        "spec": spec,
        "metrics": {**(card.get("metrics") or {}), "int8_agreement": record["agreement"]},
        "int8": {**record, "ranges": ranges},
    }
    card_path = path.with_suffix(".json")
    tmp = card_path.with_name(f".{card_path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(updated, indent=2) + "\n")
        os.replace(tmp, card_path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = [
    "CROPS",
    "DATA_FOLDERS",
    "calibration_batches",
    "calibration_window",
    "data_folder",
    "int8_runtimes",
    "quantize_model",
    "validation_samples",
]
