"""Sharded runs (:mod:`tileseg.engine.shards.run`): masks, probabilities and polygons equal a single run's."""

from __future__ import annotations

import json

import numpy as np
import pyogrio.raw
import pytest
import rasterio

from tests.conftest import write_raster
from tests.engine.nets import ShiftNet, checkpoint
from tileseg.engine import segment
from tileseg.engine.errors import OptionsError
from tileseg.engine.options import SegmentOptions
from tileseg.engine.shards.plan import segment_sharded
from tileseg.engine.shards.run import ShardError, plan_shards
from tileseg.engine.tiling import TileBand, TilePlan, TileSettings
from tileseg.models.registry import ARCHITECTURES

FIXED = dict(tile=16, batch=3, precision="fp32", runtime="torch", compile="off")  # no tuner: the same window


def blobs(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Values 0..2 (ShiftNet's classes): long vertical bars that cross every shard seam, and random specks."""
    rng = np.random.default_rng(seed)
    data = np.zeros((1, height, width), np.uint8)
    data[0, :, 5:9] = 1
    data[0, 3:, 30:33] = 2
    data[0, :, 50] = 1
    specks = rng.random((height, width)) < 0.05
    data[0][specks] = rng.integers(1, 3, specks.sum())
    return data


def read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def features(path):
    _, _, wkb, values = pyogrio.raw.read(path)
    return list(wkb), [list(v) for v in values]


def test_shards_are_even_bands_of_whole_tile_rows():
    assert plan_shards(10, 3) == [range(4), range(4, 7), range(7, 10)]
    assert plan_shards(2, 5) == [range(1), range(1, 2)]
    settings = TileSettings(checkpoint_geometry(), core=16)
    whole = list(TilePlan(settings, 150, 90))
    band = list(TileBand(settings, 150, 90, 4, 7))
    assert [(t.y, t.x, t.height, t.width) for t in band] == [(t.y, t.x, t.height, t.width) for t in whole[24:42]]
    assert [t.index for t in band] == list(range(18))  # counted from the band, as the stitcher expects
    with pytest.raises(ValueError, match="not a band"):
        TileBand(settings, 150, 90, 7, 11)


def checkpoint_geometry():
    return ShiftNet(1, 3).geometry()


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_mask_and_polygons_equal_a_single_run(tmp_path, shards):
    model = checkpoint(tmp_path, "test-shift", bands=1, classes=3)
    path = write_raster(tmp_path / "in.tif", blobs(150, 90))  # 150 is not a multiple of the tile (16)
    options = SegmentOptions(**FIXED)
    single = segment(model, path, tmp_path / "one.tif", options, vectors=tmp_path / "one.gpkg")
    sharded = segment_sharded(
        model, path, tmp_path / "out" / "many.tif", ["cpu"] * shards, options, vectors=tmp_path / "out" / "many.gpkg"
    )
    expected = read(single.output)
    assert len(np.unique(expected)) == 3
    np.testing.assert_array_equal(read(sharded.output), expected)
    one, many = features(single.vectors), features(sharded.vectors)
    assert len(one[0]) > 10 and one == many  # the bars crossing the seams are one feature each, as in one run
    assert sharded.tiles_total == single.tiles_total
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["many.gpkg", "many.tif"]  # no shard files
    with rasterio.open(sharded.output) as dst:
        assert json.loads(dst.tags()["TILESEG_SHARDS"])["shards"] == shards


def test_sharded_run_with_a_conv_net_an_roi_and_probabilities(tmp_path, raster_factory):
    model = checkpoint(tmp_path, "test-pool", bands=2, classes=3)
    path = raster_factory(83, 70, bands=2)
    # a polygon in the raster's map coordinates (30 m pixels from 500000, 4000000): columns 10-60, rows 5-70
    ring = [[500000 + 30 * x, 4000000 - 30 * y] for x, y in [(10, 5), (60, 5), (60, 70), (10, 70), (10, 5)]]
    roi = tmp_path / "roi.geojson"
    roi.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    options = SegmentOptions(roi=str(roi), **FIXED)
    single = segment(model, path, tmp_path / "one.tif", options, probabilities=tmp_path / "p1.tif")
    sharded = segment_sharded(model, path, tmp_path / "many.tif", ["cpu", "cpu"], options, tmp_path / "p2.tif")
    expected = read(single.output)
    assert (expected == 255).any() and (expected != 255).any()  # nodata outside the region, classes inside
    np.testing.assert_array_equal(read(sharded.output), expected)
    np.testing.assert_array_equal(read(sharded.probabilities), read(single.probabilities))
    assert sharded.tiles_skipped == single.tiles_skipped > 0


class FailingNet(ShiftNet):
    """ShiftNet that fails on any window holding the value 7: a poisoned tile fails its shard."""

    def forward(self, x):
        if (x * 255).round().eq(7).any():
            raise RuntimeError("poisoned tile")
        return super().forward(x)


def test_a_failing_shard_fails_the_run_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "test-failing", FailingNet)
    model = checkpoint(tmp_path, "test-failing", bands=1, classes=3)
    data = blobs(150, 90)
    data[0, 140, 80] = 7  # in the last shard's rows only
    path = write_raster(tmp_path / "in.tif", data)
    out = tmp_path / "out"
    with pytest.raises(ShardError, match=r"shard 2 of 2 .*poisoned tile"):
        segment_sharded(model, path, out / "mask.tif", ["cpu", "cpu"], SegmentOptions(**FIXED), vectors=out / "v.gpkg")
    assert list(out.iterdir()) == []


def test_blended_runs_are_refused(tmp_path):
    model = checkpoint(tmp_path, "test-shift", bands=1, classes=3)
    path = write_raster(tmp_path / "in.tif", blobs(40, 60))
    with pytest.raises(OptionsError, match="gaussian blending"):
        segment_sharded(model, path, tmp_path / "m.tif", ["cpu", "cpu"], SegmentOptions(blend="gaussian"))
    assert not (tmp_path / "m.tif").exists()


def test_the_shards_asked_for_run_with_a_smaller_tile_on_the_same_numeric_path(tmp_path):
    """Six shards asked for an image whose tuned tile leaves two tile rows: the tile is made smaller (the window
    is free: the mask does not change), six shards run, and the run says why its tile is not the tuner's."""
    from tileseg.engine.shards.plan import plan_sharded

    model = checkpoint(tmp_path, "test-shift", bands=1, classes=3)
    path = write_raster(tmp_path / "in.tif", blobs(150, 90))
    free = SegmentOptions(tile=None, batch=1, precision="fp32", runtime="torch", compile="off")
    big = plan_sharded(model, path, 1, free)
    assert -(-150 // big.runtime.tile) < 6, "the tuner's tile leaves fewer tile rows than six"
    plan = plan_sharded(model, path, 6, free)
    assert plan.count == 6 and plan.runtime.tile < big.runtime.tile and plan.runtime.runtime == big.runtime.runtime
    assert "each of the 6 shards" in plan.note
    result = segment_sharded(model, path, tmp_path / "many.tif", ["cpu"] * 6, free)
    assert any("each of the 6 shards" in w for w in result.warnings)
    single = segment(model, path, tmp_path / "one.tif", free)
    np.testing.assert_array_equal(read(result.output), read(single.output))
    fixed = plan_sharded(model, path, 6, SegmentOptions(**{**FIXED, "tile": 96}))
    assert fixed.count == 2 and "2 shards of the 6 asked" in fixed.note, "--tile is the user's: it is kept, and said"
