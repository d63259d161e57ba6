"""int8: calibrated on the model's training images, allowed only at bf16's agreement with fp32, run on demand.

One real model (``unet-em``, copied into a temporary folder) is quantized once with a few calibration crops;
its card then says int8 is not allowed, because the bar is bf16's agreement and the copy's bar is set out of
reach. A second copy whose card allows int8 runs it and is compared with fp32 on a real validation image.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from tileseg import models
from tileseg.engine import SegmentOptions, segment
from tileseg.engine.errors import OptionsError
from tileseg.engine.runtime.path import invariance_error
from tileseg.engine.runtime.runtimes import Runtime, candidates
from tileseg.models.checkpoint import SHIPPED_WEIGHTS
from tileseg.training.quantize import quantize_model

CPU = torch.device("cpu")
ORT_INT8 = Runtime("int8", False, "onnxruntime")


def _copy(name: str, folder: Path, card: dict) -> Path:
    shutil.copy(SHIPPED_WEIGHTS / "unet-em.safetensors", folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps({**card, "name": name}, indent=2))
    return folder / f"{name}.safetensors"


def _small_isbi(data_dir: Path, folder: Path) -> Path:
    """ISBI 2012 cut to six images (its adapter then trains on 20-24 and validates on 25): one image to score."""
    for part in ("images", "labels"):
        (folder / "train" / part).mkdir(parents=True)
        for n in range(20, 26):
            (folder / "train" / part / f"{n}.png").symlink_to(data_dir / "isbi2012" / "train" / part / f"{n}.png")
    return folder


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, data_dir) -> tuple[Path, dict]:
    """unet-em quantized with 4 crops, its bar (bf16's agreement) set to 1: int8 cannot reach it."""
    folder = tmp_path_factory.mktemp("int8")
    card = json.loads((SHIPPED_WEIGHTS / "unet-em.json").read_text())
    card = {k: v for k, v in card.items() if k != "int8"}
    card["spec"] = {k: v for k, v in card["spec"].items() if k != "int8"}
    card["metrics"] = {**card["metrics"], "bf16_agreement": 1.0}
    card["data"] = {**card["data"], "val_images": ["25"]}
    path = _copy("unet-em-high-bar", folder, card)
    data = _small_isbi(data_dir, folder / "isbi2012")
    record = quantize_model(str(path), data, crops=4, say=lambda _: None, runtimes=[ORT_INT8])
    return path, record


def test_int8_is_refused_where_its_agreement_falls_below_bf16s(quantized):
    path, record = quantized
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["metrics"]["int8_agreement"] < card["metrics"]["bf16_agreement"]
    assert record["allowed"] is False and card["int8"]["allowed"] is False
    assert 0.99 < record["agreement"] < 1.0, "int8 was measured against fp32 on the validation split"
    spec = models.load(path).spec
    assert spec.int8 is False and "int8" not in card["spec"]
    assert all(r.precision != "int8" for r in candidates(spec, CPU))  # auto never tries it
    with pytest.raises(OptionsError, match="does not allow"):
        candidates(spec, CPU, precision="int8")


def test_precision_int8_runs_where_the_card_allows_it_and_agrees_with_fp32(quantized, data_dir, tmp_path):
    path, record = quantized
    card = json.loads(path.with_suffix(".json").read_text())
    # the same weights and ranges, with a card whose bar int8 meets
    card["metrics"]["bf16_agreement"] = record["agreement"]
    card["int8"]["allowed"], card["spec"]["int8"] = True, True
    model = models.load(_copy("unet-em-int8", tmp_path, card))
    assert model.spec.int8 and "int8" in [r.precision for r in candidates(model.spec, CPU)]
    image = data_dir / "isbi2012" / "train" / "images" / "25.png"  # a validation image
    masks = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / f"{precision}.tif"
        result = segment(model, image, out, SegmentOptions(precision=precision, runtime="onnxruntime"))
        assert result.runtime.runtime.startswith(f"{precision}/")
        with rasterio.open(out) as src:
            masks[precision] = src.read(1)
    # the image the record was measured on, through segment() and its tuner: the recorded level
    agreement = float(np.mean(masks["int8"] == masks["fp32"]))
    assert agreement >= record["agreement"] - 1e-6, (agreement, record["agreement"])


def test_int8_in_onnx_runtime_is_tile_invariant(quantized):
    """The tuner's check, on the real int8 program: the same cores in one window and in four on the stride grid
    (so int8 is a numeric path like the others; a runtime made non-invariant on purpose is refused in
    test_tuner.py)."""
    model = models.load(quantized[0])
    assert invariance_error(model, ORT_INT8, CPU) is None


def test_int8_is_a_candidate_of_the_exported_runtimes_where_the_card_allows_it():
    spec = replace(models.card_spec("unet-em"), int8=True)
    int8 = [r for r in candidates(spec, CPU) if r.precision == "int8"]
    assert int8 and all(r.exported for r in int8), "auto searches int8 beside fp32 and bf16"
    assert candidates(spec, CPU, precision="int8") == int8
    with pytest.raises(OptionsError, match="ONNX Runtime or OpenVINO"):
        candidates(spec, CPU, precision="int8", runtime="torch")
    with pytest.raises(OptionsError, match="CPU only"):
        candidates(replace(spec, precision="fp32"), torch.device("cuda"), precision="int8")
