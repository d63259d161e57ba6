"""Objects in the many-inputs form: ``--instances tif --objects csv`` give each input its single run's objects."""

from __future__ import annotations

import csv

import numpy as np

from tests.cohorts.conftest import manifest, read, run
from tests.conftest import write_raster
from tileseg import models
from tileseg.engine import SegmentOptions, segment

EXACT = ("--precision", "fp32", "--runtime", "torch", "--tile", "128")


def test_each_input_gets_its_objects_and_a_model_without_them_is_refused(tmp_path, real_nuclei):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, (_, image, _) in enumerate(real_nuclei[:2]):
        write_raster(folder / f"n{i}.tif", image[:, :256, :256], crs=None)
    out = tmp_path / "out"
    result = run("segment", folder, "--out-dir", out, "--model", "unet-nuclei", *EXACT, "--instances", "tif",
                 "--objects", "csv", "--vectors", "geojson")  # fmt: skip
    assert result.exit_code == 0, result.output
    model = models.load("unet-nuclei")
    options = SegmentOptions(precision="fp32", runtime="torch", tile=128)
    for i, record in enumerate(manifest(out)):
        assert record["outputs"]["instances"] == f"n{i}/instances.tif"
        assert record["outputs"]["objects"] == f"n{i}/objects.csv"
        single = segment(model, folder / f"n{i}.tif", tmp_path / f"m{i}.tif", options, instances=tmp_path / f"o{i}.tif")
        labels = read(out / record["outputs"]["instances"])
        np.testing.assert_array_equal(labels, read(single.instances))
        with open(out / record["outputs"]["objects"], newline="") as table:
            assert len(list(csv.DictReader(table))) == labels.max() > 0
    refused = run("segment", folder, "--out-dir", tmp_path / "em", "--model", "unet-em", "--instances", "tif")
    assert refused.exit_code != 0 and "unet-em has no instance output" in refused.output
    assert not (tmp_path / "em" / "n0").exists()
