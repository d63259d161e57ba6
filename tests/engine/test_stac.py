"""STAC items as inputs: an asset of an item read from a local file, over https (a Range server on loopback)
and from S3 (moto's server), and single-band assets stacked by common name; each mask must equal the one of
the local file(s) it stands for, and every refusal must say what the item has."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.engine.nets import checkpoint
from tests.engine.test_remote import RangeServer, mask_of
from tileseg.engine import segment
from tileseg.engine.errors import BandMismatchError, InputError, UnreadableInputError
from tileseg.engine.io import InputRaster
from tileseg.engine.io.inputs import inspect_input, locate, open_input
from tileseg.engine.io.stac import StacSource, absolute_href, read_item
from tileseg.engine.io.stack import StackedRaster
from tileseg.engine.options import SegmentOptions

FP32 = SegmentOptions(runtime="torch", precision="fp32", tile=128, readers=3)
TRANSFORM = Affine(10.0, 0, 500000.0, 0, -10.0, 4200000.0)  # 10 m pixels in UTM 33N


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("TILESEG_HTTP_RETRY_DELAY", "0.05")


@pytest.fixture
def rgb(tmp_path):
    return checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb", dtypes=("uint8", "uint16"))


def write_band(path: Path, data: np.ndarray, transform: Affine = TRANSFORM) -> Path:
    """A single-band Cloud Optimized GeoTIFF of ``data`` on a UTM grid of ``transform``."""
    profile = dict(
        driver="COG", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype.name,
        crs="EPSG:32633", transform=transform, blocksize=128, compress="deflate",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[None])
    return path


def scene(size: int, dtype=np.uint8, seed: int = 4) -> np.ndarray:
    """Three bands of smooth noise (structure for the model to see)."""
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 4000
    coarse = rng.integers(0, top, (3, size // 16 + 1, size // 16 + 1)).astype(np.float32)
    data = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :size, :size]
    return (data + rng.normal(0, top / 12, data.shape)).clip(0, top).astype(dtype)


def write_stack(path: Path, data: np.ndarray) -> Path:
    profile = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=3, dtype=data.dtype.name,
        crs="EPSG:32633", transform=TRANSFORM, tiled=True, blockxsize=128, blockysize=128, compress="deflate",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def write_item(folder: Path, assets: dict, name: str = "item.json") -> Path:
    """A STAC item with ``assets`` (hrefs as given: relative ones are relative to the item)."""
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "S2X_TEST_ITEM",
        "geometry": None,
        "properties": {"datetime": "2024-06-01T10:00:00Z"},
        "links": [],
        "assets": assets,
    }
    path = folder / name
    path.write_text(json.dumps(item))
    return path


def sentinel_like(folder: Path, data: np.ndarray) -> Path:
    """An item with a ``visual`` 3-band COG and red/green/blue single-band assets, declared the STAC 1.0 way
    (``eo:bands``) for two and the STAC 1.1 way (``bands`` with ``eo:common_name``) for one, plus a
    thumbnail that is not a raster of the scene."""
    (folder / "bands").mkdir(exist_ok=True)
    write_stack(folder / "visual.tif", data)
    for i, name in enumerate(("B04", "B03", "B02")):
        write_band(folder / "bands" / f"{name}.tif", data[i])
    (folder / "thumb.png").write_bytes(b"not read")
    tiff = "image/tiff; application=geotiff; profile=cloud-optimized"
    return write_item(
        folder,
        {
            "visual": {"href": "visual.tif", "type": tiff, "roles": ["visual"]},
            "B04": {"href": "bands/B04.tif", "type": tiff, "eo:bands": [{"name": "B04", "common_name": "red"}]},
            "B03": {"href": "./bands/B03.tif", "type": tiff, "eo:bands": [{"name": "B03", "common_name": "green"}]},
            "B02": {"href": "bands/B02.tif", "type": tiff, "bands": [{"name": "B02", "eo:common_name": "blue"}]},
            "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
        },
    )


def test_the_visual_asset_of_a_local_item_gives_the_file_mask(tmp_path, rgb):
    item = sentinel_like(tmp_path, scene(320))
    local = mask_of(rgb, tmp_path / "visual.tif", tmp_path / "local.tif")
    np.testing.assert_array_equal(mask_of(rgb, item, tmp_path / "item.tif"), local)
    named = SegmentOptions(**{**FP32.model_dump(), "asset": "visual"})
    segment(rgb, str(item), tmp_path / "named.tif", named)
    with rasterio.open(tmp_path / "named.tif") as src:
        np.testing.assert_array_equal(src.read(1), local)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_band_names_stack_single_band_assets_as_the_stacked_file(tmp_path, rgb, dtype):
    data = scene(300, dtype)  # uint16: the stack's scaling (percentiles per band) must be the file's
    item = sentinel_like(tmp_path, data)
    stack_file = write_stack(tmp_path / "stack.tif", data)
    local = mask_of(rgb, stack_file, tmp_path / "local.tif")
    names = SegmentOptions(**{**FP32.model_dump(), "bands": "red,green,blue"})
    segment(rgb, str(item), tmp_path / "stacked.tif", names, probabilities=tmp_path / "p-stacked.tif")
    segment(rgb, stack_file, tmp_path / "file.tif", FP32, probabilities=tmp_path / "p-file.tif")
    with rasterio.open(tmp_path / "stacked.tif") as src:
        stacked = src.read(1)
        assert src.crs.to_epsg() == 32633 and src.transform == TRANSFORM
    np.testing.assert_array_equal(stacked, local)
    # the random test network answers one class almost everywhere: its probabilities show the inputs agree
    probabilities = _read(tmp_path / "p-stacked.tif")
    assert probabilities.std() > 1
    np.testing.assert_array_equal(probabilities, _read(tmp_path / "p-file.tif"))
    with open_input(item, rgb.spec, names.bands) as stack, InputRaster(stack_file, rgb.spec) as file:
        for got, want in zip(vars(stack.scaling).values(), vars(file.scaling).values(), strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(stack.read_window(-5, 290, 32), file.read_window(-5, 290, 32))


def test_an_item_over_https_and_from_s3_gives_the_file_mask(tmp_path, rgb, s3):
    item = sentinel_like(tmp_path, scene(256, seed=7))
    local = mask_of(rgb, tmp_path / "visual.tif", tmp_path / "local.tif")
    server = RangeServer(tmp_path, fail_every=5)  # the item's own GET retried too
    try:
        np.testing.assert_array_equal(mask_of(rgb, f"{server.url}/item.json", tmp_path / "http.tif"), local)
        stacked = SegmentOptions(**{**FP32.model_dump(), "bands": "red,green,blue"})
        with open_input(f"{server.url}/item.json", rgb.spec, stacked.bands) as stack:
            assert isinstance(stack, StackedRaster) and stack.info.name == "S2X_TEST_ITEM"
            np.testing.assert_array_equal(stack.read_region(0, 0, 256, 256)[0], _band(tmp_path / "bands/B04.tif"))
    finally:
        server.close()
    assert server.failures >= 1
    bucket = s3.bucket()
    client = s3.client()
    for path in [item, tmp_path / "visual.tif", *sorted((tmp_path / "bands").iterdir())]:
        client.upload_file(str(path), bucket, f"scenes/{path.relative_to(tmp_path)}")
    np.testing.assert_array_equal(mask_of(rgb, f"s3://{bucket}/scenes/item.json", tmp_path / "s3.tif"), local)


def _band(path: Path) -> np.ndarray:
    return _read(path)[0]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_refusals_list_what_the_item_has(tmp_path, rgb):
    item = sentinel_like(tmp_path, scene(64))
    with pytest.raises(InputError, match="has no asset 'nir'.*its assets: visual, B04 \\(red\\), B03 \\(green\\)"):
        open_input(item, rgb.spec, asset="nir")
    with pytest.raises(BandMismatchError, match="common name 'nir'; its common names: blue, green, red"):
        open_input(item, rgb.spec, ("red", "green", "nir"))
    no_visual = write_item(tmp_path, {"B04": {"href": "bands/B04.tif"}}, "bare.json")
    with pytest.raises(InputError, match="has no 'visual' asset: choose one with --asset.*its assets: B04"):
        inspect_input(no_visual, rgb.spec)
    with pytest.raises(BandMismatchError, match="asset visual has 3 bands"):
        open_input(item, rgb.spec, ("visual", "red", "green"))  # an asset's key also names it
    with pytest.raises(BandMismatchError, match="band names pick the assets of a STAC item"):
        open_input(tmp_path / "visual.tif", rgb.spec, ("red", "green", "blue"))
    (tmp_path / "x.json").write_text('{"type": "FeatureCollection"}')
    with pytest.raises(UnreadableInputError, match="not a STAC Item"):
        locate(tmp_path / "x.json")
    with pytest.raises(BandMismatchError, match="takes 3 band\\(s\\); --bands names 2"):
        open_input(item, rgb.spec, ("red", "green"))


def test_a_coarser_asset_is_interpolated_onto_the_finest_grid(tmp_path, rgb):
    data = scene(256)
    write_band(tmp_path / "r.tif", data[0])
    write_band(tmp_path / "g.tif", data[1])
    coarse = data[2, ::2, ::2].copy()  # 20 m: the same extent at half the pixels
    write_band(tmp_path / "b.tif", coarse, TRANSFORM @ Affine.scale(2))
    eo = {n: {"href": f"{n[0]}.tif", "eo:bands": [{"common_name": n}]} for n in ("red", "green", "blue")}
    item = write_item(tmp_path, eo)
    with open_input(item, rgb.spec, ("red", "green", "blue")) as stack:
        assert (stack.height, stack.width) == (256, 256) and stack.transform == TRANSFORM
        region = stack.read_region(40, 60, 100, 120)
        header = inspect_input(item, rgb.spec, ("red", "green", "blue"))
    assert header.info.width == 256 and header.info.bands == 3
    np.testing.assert_array_equal(region[0], data[0, 40:140, 60:180])
    # bilinear between pixel centres: fine pixel i lies at coarse position i / 2 - 0.25; rows 41, 43, ... at
    # 20.25, 21.25, ...; columns 60, 62, ... at 29.75, 30.75, ...
    c = coarse.astype(float)
    rows = 0.75 * c[20:70] + 0.25 * c[21:71]
    expected = 0.25 * rows[:, 29:89] + 0.75 * rows[:, 30:90]
    np.testing.assert_allclose(region[2, 1::2, 0::2], expected, atol=0.51)
    shifted = write_band(tmp_path / "b.tif", coarse, TRANSFORM @ Affine.translation(64, 0) @ Affine.scale(2))
    assert shifted.exists()
    with pytest.raises(InputError, match="do not cover the same extent"):
        open_input(item, rgb.spec, ("red", "green", "blue"))


def test_hrefs_are_made_absolute_against_the_item():
    assert absolute_href("b/B04.tif", "https://h.org/items/x/item.json") == "https://h.org/items/x/b/B04.tif"
    assert absolute_href("../B04.tif", "s3://bkt/items/x/item.json") == "s3://bkt/items/B04.tif"
    assert absolute_href("s3://other/B04.tif", "https://h.org/item.json") == "s3://other/B04.tif"
    assert absolute_href("B04.tif", "/data/items/item.json") == "/data/items/B04.tif"
    assert absolute_href("file:///data/B04.tif", "/data/items/item.json") == "/data/B04.tif"


def test_a_pinned_item_must_not_have_changed(tmp_path):
    item = write_item(tmp_path, {"visual": {"href": "visual.tif"}})
    server = RangeServer(tmp_path)
    try:
        read = read_item(f"{server.url}/item.json")
        assert read_item(f"{server.url}/item.json#sha256={read.digest}").assets.keys() == {"visual"}
        write_item(tmp_path, {"visual": {"href": "http://169.254.169.254/latest/x.tif"}})
        with pytest.raises(UnreadableInputError, match="changed since it was checked"):
            read_item(f"{server.url}/item.json#sha256={read.digest}")
    finally:
        server.close()
    assert isinstance(locate(item), StacSource)
