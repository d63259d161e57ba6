"""``tileseg segment`` with object storage and STAC: an s3:// input, a STAC item with --asset and --bands, and
OUTPUT, --vectors and --probabilities at s3:// URLs, against a real S3 endpoint on loopback (moto's server).
Results land at their keys only when the run succeeded; a failing run or upload leaves no object."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cli.test_workers import read, run
from tests.engine.nets import checkpoint
from tests.engine.test_stac import scene, sentinel_like, write_stack


@pytest.fixture
def weights(tmp_path, monkeypatch):
    checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb-test")
    monkeypatch.setenv("TILESEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    return tmp_path / "weights"


def test_s3_input_and_outputs_land_at_their_keys(tmp_path, data_dir, weights, s3):
    source = data_dir / "geotiff" / "rgb-byte-tenth.tif"
    local = tmp_path / "local"
    result = run("segment", source, local / "mask.tif", "--model", "rgb-test", "-q",
                 "--vectors", local / "regions.geojson", "--probabilities", local / "p.tif")  # fmt: skip
    assert result.exit_code == 0, result.output
    bucket = s3.bucket()
    s3.client().upload_file(str(source), bucket, "in/scene.tif")
    out = f"s3://{bucket}/results/run-1"
    result = run("segment", f"s3://{bucket}/in/scene.tif", f"{out}/mask.tif", "--model", "rgb-test", "-q",
                 "--vectors", f"{out}/regions.geojson", "--probabilities", f"{out}/p.tif")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert s3.keys(bucket, "results/") == [f"results/run-1/{n}" for n in ("mask.tif", "p.tif", "regions.geojson")]
    for name in ("mask.tif", "p.tif"):
        s3.client().download_file(bucket, f"results/run-1/{name}", str(tmp_path / name))
        np.testing.assert_array_equal(read(tmp_path / name), read(local / name))
    head = s3.client().head_object(Bucket=bucket, Key="results/run-1/regions.geojson")
    assert head["ContentType"] == "application/geo+json"
    assert head["ContentLength"] == (local / "regions.geojson").stat().st_size


def test_a_failing_run_or_upload_leaves_no_object(tmp_path, data_dir, weights, s3):
    bucket = s3.bucket()
    source = data_dir / "geotiff" / "rgb-byte-tenth.tif"
    # the run fails (a band the input lacks): nothing is uploaded
    result = run("segment", source, f"s3://{bucket}/out/mask.tif", "--model", "rgb-test", "--bands", "1,2,9")
    assert result.exit_code == 1 and "band 9 does not exist" in result.output
    # the run succeeds, the mask's upload fails (no such bucket): the polygons uploaded before it are removed
    result = run("segment", source, "s3://no-such-bucket/out/mask.tif", "--model", "rgb-test", "-q",
                 "--vectors", f"s3://{bucket}/out/regions.geojson")  # fmt: skip
    assert result.exit_code == 1 and result.output.startswith("error: ") and "no-such-bucket" in result.output
    assert s3.keys(bucket) == []
    result = run("segment", source, f"s3://{bucket}/out/", "--model", "rgb-test")
    assert result.exit_code == 2 and "give the object's key" in result.output


def test_a_stac_item_with_asset_and_bands(tmp_path, weights, s3):
    data = scene(192)
    item = sentinel_like(tmp_path, data)
    stack = write_stack(tmp_path / "stack.tif", data)
    bucket = s3.bucket()
    for path in [item, tmp_path / "visual.tif", *sorted((tmp_path / "bands").iterdir())]:
        s3.client().upload_file(str(path), bucket, f"items/{path.relative_to(tmp_path)}")
    for args, local in (
        (["--asset", "visual"], tmp_path / "visual.tif"),
        (["--bands", "red,green,blue"], stack),
    ):
        expected = tmp_path / "expected.tif"
        assert run("segment", local, expected, "--model", "rgb-test", "-q").exit_code == 0
        for source in (item, f"s3://{bucket}/items/item.json"):
            result = run("segment", source, tmp_path / "got.tif", "--model", "rgb-test", *args)
            assert result.exit_code == 0, result.output
            assert "S2X_TEST_ITEM" in result.output  # the progress bar names the item
            np.testing.assert_array_equal(read(tmp_path / "got.tif"), read(expected))
    result = run("segment", item, tmp_path / "x.tif", "--model", "rgb-test", "--asset", "nir")
    assert result.exit_code == 1 and "has no asset 'nir'" in result.output and "B04 (red)" in result.output


def test_a_stac_item_in_shards_gives_the_one_process_mask(tmp_path, weights):
    item = sentinel_like(tmp_path, scene(256, seed=5))
    for args in (["--asset", "visual"], ["--bands", "red,green,blue"]):
        masks = []
        for workers in ("1", "2"):
            out = tmp_path / f"mask-{workers}.tif"
            result = run("segment", item, out, "--model", "rgb-test", "--tile", "64", "-q", "--workers", workers, *args)
            assert result.exit_code == 0, result.output
            masks.append(read(out))
        np.testing.assert_array_equal(*masks)
