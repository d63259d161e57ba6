"""`tileseg segment --workers N` and `--devices`: one image in several processes, the outputs of one."""

from __future__ import annotations

import json

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from click.testing import CliRunner

from tests.engine.nets import checkpoint
from tests.engine.test_shards import FailingNet
from tileseg.cli import cli
from tileseg.models.registry import ARCHITECTURES

FIXED = ["--tile", "64", "--batch", "4", "--precision", "fp32", "--runtime", "torch", "--compile", "off", "-q"]


@pytest.fixture
def weights(tmp_path, monkeypatch):
    checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb-test", seed=4)  # two classes here
    monkeypatch.setitem(ARCHITECTURES, "test-failing", FailingNet)
    checkpoint(tmp_path, "test-failing", bands=3, classes=3, name="failing")
    monkeypatch.setenv("TILESEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    return tmp_path / "weights"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def features(path):
    _, _, wkb, values = pyogrio.raw.read(path)
    return list(wkb), [list(v) for v in values]


def roi_file(tmp_path, image):
    """A polygon over most of the image (but not all of it), in its map coordinates."""
    with rasterio.open(image) as src:
        left, bottom, right, top = src.bounds
    dx, dy = (right - left) / 10, (top - bottom) / 12
    ring = [[left + dx, top - dy], [right - dx, top - dy], [right - 2 * dx, bottom + dy], [left + dx, bottom + dy]]
    path = tmp_path / "roi.geojson"
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [[*ring, ring[0]]]}))
    return path


@pytest.mark.parametrize("flags", [["--workers", "2"], ["--workers", "3"], ["--devices", "cpu,cpu"]])
def test_workers_give_the_single_process_mask_and_polygons(tmp_path, data_dir, weights, flags):
    image = data_dir / "geotiff" / "RGB.byte.tif"  # 718 rows: 12 tile rows of 64, the last one short
    roi = roi_file(tmp_path, image)
    one, many = tmp_path / "one", tmp_path / "many"
    common = ["--model", "rgb-test", "--roi", roi, "--cog", *FIXED]
    single = run("segment", image, one / "mask.tif", "--vectors", one / "v.gpkg", *common)
    assert single.exit_code == 0, single.output
    sharded = run("segment", image, many / "mask.tif", "--vectors", many / "v.gpkg", *common, *flags)
    assert sharded.exit_code == 0, sharded.output
    expected = read(one / "mask.tif")
    assert (expected == 255).any() and len(np.unique(expected)) > 2  # nodata (border, outside the ROI) and classes
    np.testing.assert_array_equal(read(many / "mask.tif"), expected)
    assert features(many / "v.gpkg") == features(one / "v.gpkg")
    wkb, _ = features(one / "v.gpkg")
    with rasterio.open(one / "mask.tif") as dst:
        assert dst.overviews(1)  # a COG, as asked
        top, bottom = dst.xy(200, 0)[1], dst.xy(560, 0)[1]  # rows around every seam of 2 and 3 shards
    spans = shapely.bounds(shapely.from_wkb(wkb))
    assert ((spans[:, 1] < bottom) & (spans[:, 3] > top)).any()  # some object crosses every seam: still one
    assert sorted(p.name for p in many.iterdir()) == ["mask.tif", "v.gpkg"]  # no shard files left


def test_a_failing_shard_fails_the_command_with_its_reason(tmp_path, data_dir, weights):
    image = tmp_path / "poisoned.tif"
    with rasterio.open(data_dir / "geotiff" / "RGB.byte.tif") as src:
        data, profile = src.read(), src.profile
    data[data == 7] = 8
    data[:, 600, 400] = 7  # FailingNet refuses this value: only the second shard reads it
    with rasterio.open(image, "w", **profile) as dst:
        dst.write(data)
    out = tmp_path / "out"
    result = run(
        "segment", image, out / "mask.tif", "--model", "failing", "--vectors", out / "v.gpkg", "--workers", 2, *FIXED
    )
    assert result.exit_code == 1
    assert "error: shard 2 of 2" in result.output and "poisoned tile" in result.output
    assert "Traceback" not in result.output
    assert list(out.iterdir()) == []  # no mask, no vectors, no shard files


def test_bad_worker_options_are_refused(tmp_path, data_dir, weights):
    image = data_dir / "geotiff" / "rgb-byte-tenth.tif"
    both = run("segment", image, tmp_path / "m.tif", "--model", "rgb-test", "--workers", 3, "--devices", "cpu,cpu")
    assert both.exit_code == 2 and "disagrees" in both.output
    remote = run("segment", image, tmp_path / "m.tif", "--model", "rgb-test", "--workers", 2, "--server", "http://x")
    assert remote.exit_code == 2 and "--server" in remote.output
    blended = run("segment", image, tmp_path / "m.tif", "--model", "rgb-test", "--workers", 2, "--blend", "gaussian")
    assert blended.exit_code == 1 and "error: shards: gaussian blending" in blended.output
    zero = run("segment", image, tmp_path / "m.tif", "--model", "rgb-test", "--workers", 0)
    assert zero.exit_code == 2
    assert not (tmp_path / "m.tif").exists()
