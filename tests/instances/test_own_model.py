"""A user's own instance model: the shipped unet-nuclei exported to TorchScript, added with ``--instances``,
serves the same objects as the native network where their masks agree."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import rasterio
import torch
from click.testing import CliRunner

from tests.conftest import write_raster
from tileseg import models
from tileseg.cli import cli
from tileseg.engine import SegmentOptions, segment
from tileseg.engine.instances.decode import decode_whole
from tileseg.models.checkpoint import SHIPPED_WEIGHTS

EXACT = {"precision": "fp32", "runtime": "torch", "compile": "off", "tile": 128}


def test_an_added_torchscript_model_with_instances_serves_objects(tmp_path, monkeypatch, real_nuclei):
    weights = tmp_path / "weights"
    weights.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(SHIPPED_WEIGHTS / f"unet-nuclei{suffix}", weights / f"unet-nuclei{suffix}")
    monkeypatch.setenv("TILESEG_WEIGHTS_DIR", str(weights))
    native = models.load("unet-nuclei").float().to(memory_format=torch.contiguous_format)
    x = torch.randn(1, 3, 256, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(native, x, check_trace=False), str(tmp_path / "nuclei.pt"))
    spec = models.read_card("unet-nuclei")["spec"]
    classes = ",".join(f"{c['index']}:{c['name']}:{c['color']}" for c in spec["classes"])
    mean = ",".join(str(v) for v in spec["input"]["mean"])
    std = ",".join(str(v) for v in spec["input"]["std"])
    common = ["models", "add", "mine", str(tmp_path / "nuclei.pt"), "--bands", "3", "--classes", classes]
    common += ["--mean", mean, "--std", std, "--probe-budget", "300"]

    bad = CliRunner().invoke(cli, [*common, "--instances", "seed=7,grow=1+2"])
    assert bad.exit_code != 0 and "instances" in bad.output and not (weights / "mine.json").exists()
    added = CliRunner().invoke(cli, [*common, "--instances", "seed=1,grow=1+2,distance=3,min_area=8,erode=1"])
    assert added.exit_code == 0, added.output
    chosen = {"min_area": 8, "distance": 3, "erode": 1}
    assert models.read_card("mine")["spec"]["instances"] == spec["instances"] | chosen

    image = write_raster(tmp_path / "in.tif", real_nuclei[0][1], crs=None)
    options = SegmentOptions(**EXACT)
    theirs = segment(models.load("mine"), image, tmp_path / "m.tif", options, instances=tmp_path / "o.tif")
    ours = segment(models.load("unet-nuclei"), image, tmp_path / "n.tif", options)
    with rasterio.open(theirs.instances) as src:
        labels = src.read(1)
    with rasterio.open(theirs.output) as a, rasterio.open(ours.output) as b:
        mask, native_mask = a.read(1), b.read(1)
    assert np.mean(mask == native_mask) > 0.999  # TorchScript and eager round alike almost everywhere
    np.testing.assert_array_equal(labels, decode_whole(mask, models.load("mine").spec.instances))
    assert labels.max() > 10
