"""`tileseg segment` and `tileseg models` as users run them, including bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from tests.engine.nets import checkpoint
from tileseg.cli import cli


@pytest.fixture
def weights(tmp_path, monkeypatch):
    checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb-test")
    checkpoint(tmp_path, "test-valid", bands=1, classes=2, name="grey-valid")
    monkeypatch.setenv("TILESEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    return tmp_path / "weights"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_segment_writes_a_mask(tmp_path, data_dir, weights):
    out = tmp_path / "out" / "mask.tif"
    result = run("segment", data_dir / "geotiff" / "RGB.byte.tif", out, "--model", "rgb-test", "--tile", "128", "-q")
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as dst:
        assert dst.crs.to_epsg() == 32618
    by_path = tmp_path / "by_path.tif"
    result = run(
        "segment", data_dir / "geotiff" / "RGB.byte.tif", by_path, "--weights", weights / "rgb-test.safetensors", "-q"
    )
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as a, rasterio.open(by_path) as b:
        np.testing.assert_array_equal(a.read(), b.read())  # tiling at another size gives the same mask


def test_models_json_contract(weights):
    result = run("models", "--json")
    assert result.exit_code == 0
    entries = {m["name"]: m for m in json.loads(result.output)["models"]}
    assert set(entries) == {"rgb-test", "grey-valid"}
    rgb = entries["rgb-test"]
    assert rgb["arch"] == "test-pool" and rgb["bands"] == 3
    assert rgb["classes"][1] == {"index": 1, "name": "class1", "color": "#ff0000"}
    assert rgb["spec"]["geometry"]["halo"] == 16 and "training" in rgb
    assert entries["grey-valid"]["spec"]["geometry"]["output_smaller"] is True
    table = run("models")
    assert "rgb-test" in table.output and "grey-valid" in table.output


def bad_inputs(tmp_path, data_dir):
    text = tmp_path / "notes.tif"
    text.write_text("this is not an image\n" * 50)
    truncated = tmp_path / "truncated.tif"  # a COG: its header comes first, so it opens and fails on reading
    raw = (data_dir / "geotiff" / "cogeo.tif").read_bytes()
    truncated.write_bytes(raw[: len(raw) * 6 // 10])
    corrupt = tmp_path / "corrupt.tif"  # whole, but its compressed blocks are garbage: fails on reading
    with rasterio.open(data_dir / "geotiff" / "RGB.byte.tif") as src:
        profile = {**src.profile, "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
        with rasterio.open(corrupt, "w", **profile) as dst:
            dst.write(src.read())
    with rasterio.open(corrupt) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    raw = bytearray(corrupt.read_bytes())
    raw[offset + 2 : offset + size - 2] = np.random.default_rng(0).integers(0, 256, size - 4, np.uint8).tobytes()
    corrupt.write_bytes(bytes(raw))
    no_directory = tmp_path / "no_directory.tif"  # its directory lies past the cut
    raw = (data_dir / "geotiff" / "RGB.byte.tif").read_bytes()
    no_directory.write_bytes(raw[: len(raw) // 2])
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    grey = data_dir / "geotiff" / "shade.tif"
    return {
        "not an image": ([text, "--model", "rgb-test"], "not a raster"),
        "truncated": ([truncated, "--model", "rgb-test"], "is truncated"),
        "corrupt blocks": ([corrupt, "--model", "rgb-test", "--tile", "128"], "truncated or corrupt"),
        "truncated directory": ([no_directory, "--model", "rgb-test"], "not a raster"),
        "empty": ([empty, "--model", "rgb-test"], "empty"),
        "missing": ([tmp_path / "nope.tif", "--model", "rgb-test"], "no such file"),
        "bands": ([grey, "--model", "rgb-test"], "takes 3 band"),
        "geometry": (
            [data_dir / "geotiff" / "RGB.byte.tif", "--model", "rgb-test", "--tile", "30"],
            "nearest valid: 28, 32",
        ),
        "valid-unet geometry": ([grey, "--model", "grey-valid", "--tile", "36"], "nearest valid: 32, 40"),
        "unknown model": ([grey, "--model", "nosuch"], "no installed model named 'nosuch'"),
        "bad band": ([grey, "--model", "grey-valid", "--bands", "2"], "band 2 does not exist"),
        "overlap in crop": ([grey, "--model", "grey-valid", "--overlap", "0.3"], "overlap applies"),
    }


BAD_CASES = [
    "not an image",
    "truncated",
    "corrupt blocks",
    "truncated directory",
    "empty",
    "missing",
    "bands",
    "geometry",
    "valid-unet geometry",
    "unknown model",
    "bad band",
    "overlap in crop",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_a_clear_error(tmp_path, data_dir, weights, case):
    args, message = bad_inputs(tmp_path, data_dir)[case]
    out = tmp_path / "result" / "mask.tif"
    out.parent.mkdir()
    result = run("segment", args[0], out, *args[1:], "-q")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output
    assert list(out.parent.iterdir()) == [], "no OUTPUT and no temporary file is left"


def test_corrupt_checkpoints_fail_clearly(tmp_path, data_dir, weights):
    broken = tmp_path / "broken"
    broken.mkdir()
    grey = data_dir / "geotiff" / "shade.tif"
    shutil.copy(weights / "rgb-test.safetensors", broken / "nocard.safetensors")
    (broken / "garbage.safetensors").write_bytes(b"\x00" * 100)
    shutil.copy(weights / "rgb-test.json", broken / "garbage.json")
    card = json.loads((weights / "rgb-test.json").read_text())
    shutil.copy(weights / "rgb-test.safetensors", broken / "unknown.safetensors")
    (broken / "unknown.json").write_text(json.dumps({**card, "arch": "resnet"}))
    shutil.copy(weights / "rgb-test.safetensors", broken / "shapes.safetensors")
    (broken / "shapes.json").write_text(json.dumps({**card, "hparams": {"width": 8}}))
    cases = {
        "nocard": "has no model card",
        "garbage": "not a readable safetensors",
        "unknown": "unknown architecture",
        "shapes": "does not match its card",
    }
    for stem, message in cases.items():
        result = run("segment", grey, tmp_path / "m.tif", "--weights", broken / f"{stem}.safetensors", "-q")
        assert result.exit_code == 1 and message in result.output, (stem, result.output)


def test_segment_vectors_and_bad_vector_paths(tmp_path, data_dir, weights):
    source = data_dir / "geotiff" / "rgb-byte-tenth.tif"
    out = tmp_path / "out" / "mask.tif"
    result = run("segment", source, out, "--model", "rgb-test", "--vectors", tmp_path / "v" / "regions.fgb", "-q")
    assert result.exit_code == 0, result.output
    import pyogrio

    assert pyogrio.read_info(tmp_path / "v" / "regions.fgb")["features"] > 0
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for bad, message in (
        (tmp_path / "regions.shp", "no known vector format"),
        (blocker / "regions.gpkg", "cannot write"),
    ):
        mask = tmp_path / "refused" / "mask.tif"
        result = run("segment", source, mask, "--model", "rgb-test", "--vectors", bad, "-q")
        assert result.exit_code == 1 and result.output.startswith("error: ") and message in result.output
        assert not mask.parent.exists()  # refused before any work
    result = run(
        "segment", source, out, "--model", "rgb-test", "--vectors", tmp_path / "r.gpkg", "--vector-classes", "9"
    )
    assert result.exit_code == 1 and "not classes of" in result.output
    assert not (tmp_path / "r.gpkg").exists()
