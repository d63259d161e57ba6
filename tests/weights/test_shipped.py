"""The shipped checkpoints: they load through the model contract, their cards are complete, and they segment
held-out data through the engine well above the majority-class baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

import models
from service.engine import SegmentOptions, segment

MEDICAL = ["unet-em", "unetpp-em"]


@pytest.fixture(autouse=True)
def shipped_weights(monkeypatch):
    monkeypatch.delenv("TILESEG_WEIGHTS_DIR", raising=False)


def test_the_medical_models_are_installed():
    assert set(MEDICAL) <= set(models.available())


@pytest.mark.parametrize("name", MEDICAL)
def test_card_is_complete(name):
    card = models.describe(name)
    assert card["bands"] == 1
    assert [(c["index"], c["name"]) for c in card["classes"]] == [(0, "membrane"), (1, "cell")]
    assert "research" in card["license"].lower()
    metrics = card["metrics"]
    assert metrics["pixel_error"] < metrics["majority_baseline_pixel_error"] - 0.1
    assert set(metrics["per_class_iou"]) == {"membrane", "cell"}
    assert "25" in json.dumps(card["training"]) or "25" in json.dumps(metrics)  # the held-out split is named


@pytest.mark.parametrize("name", MEDICAL)
def test_segments_held_out_isbi_image_25(tmp_path, data_dir, name):
    torch.set_num_threads(2)
    model = models.load(name)
    image = data_dir / "isbi2012" / "train" / "images" / "25.png"
    labels = np.asarray(Image.open(data_dir / "isbi2012" / "train" / "labels" / "25.png")) // 255
    out = tmp_path / "mask.tif"
    segment(model, image, out, SegmentOptions(precision="fp32"))
    with rasterio.open(out) as dst:
        mask = dst.read(1)
    assert mask.shape == labels.shape and set(np.unique(mask)) <= {0, 1}
    error = float((mask != labels).mean())
    baseline = float(min(labels.mean(), 1 - labels.mean()))
    assert error <= baseline - 0.1, f"{name}: pixel error {error:.4f}, majority baseline {baseline:.4f}"
