"""Real rasters in, georeferenced masks out: CRS, transform, nodata, alpha, 16-bit, COG, provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from tests.engine.nets import checkpoint
from tileseg.engine import SegmentOptions, segment
from tileseg.engine.errors import BandMismatchError, DtypeError, PixelSizeError


@pytest.fixture
def rgb_model(tmp_path):
    return checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb-test")


def test_georeferencing_and_nodata_border(tmp_path, data_dir, rgb_model):
    src_path = data_dir / "geotiff" / "RGB.byte.tif"
    out = tmp_path / "mask.tif"
    result = segment(rgb_model, src_path, out, SegmentOptions(tile=128))
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.width, dst.height) == (src.crs, src.transform, src.width, src.height)
        assert dst.dtypes[0] == "uint8" and dst.nodata == 255
        assert dst.profile["tiled"] and dst.profile["blockxsize"] == 512
        assert dst.compression is not None
        mask = dst.read(1)
        invalid = src.dataset_mask() == 0
        assert invalid.any() and (~invalid).any()
        np.testing.assert_array_equal(mask == 255, invalid)
        assert mask[~invalid].max() < 4
        tags = dst.tags()
        assert tags["TILESEG_MODEL"] == "rgb-test" and len(tags["TILESEG_CARD_SHA256"]) == 64
        assert json.loads(tags["TILESEG_OPTIONS"])["tile"] == 128
        assert [c["name"] for c in json.loads(dst.tags(1)["CLASSES"])] == ["class0", "class1", "class2", "class3"]
        assert dst.colormap(1)[1][:3] == (255, 0, 0)
    assert result.tiles_skipped > 0  # the scene's corners are wholly nodata at this tile size


def test_rgba_alpha_is_the_mask(tmp_path, data_dir, rgb_model):
    src_path = data_dir / "geotiff" / "RGBA.byte.tif"
    out = tmp_path / "mask.tif"
    segment(rgb_model, src_path, out, SegmentOptions(tile=128))
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        alpha = src.read(4)
        mask = dst.read(1)
    np.testing.assert_array_equal(mask == 255, alpha == 0)
    rgb = tmp_path / "rgb.tif"
    segment(rgb_model, data_dir / "geotiff" / "RGB.byte.tif", rgb, SegmentOptions(tile=128))
    with rasterio.open(rgb) as dst:
        same = dst.read(1)
    valid = alpha > 0
    assert (same[valid] == mask[valid]).mean() > 0.999


def test_uint16_and_band_rules(tmp_path, data_dir):
    pan = data_dir / "geotiff" / "spacenet_atlanta_pan_uint16.tif"
    grey = checkpoint(tmp_path, "test-pool", bands=1, classes=2, name="grey-test")
    out = tmp_path / "pan.tif"
    segment(grey, pan, out, SegmentOptions(tile=128))
    with rasterio.open(pan) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        np.testing.assert_array_equal(dst.read(1) == 255, src.dataset_mask() == 0)
    rgb = checkpoint(tmp_path, "test-pool", bands=3, classes=2, name="rgb-only")
    with pytest.raises(BandMismatchError, match="takes 3 band.*a single band feeds all 3 repeated: --bands 1,1,1"):
        segment(rgb, pan, tmp_path / "x.tif")
    # as the hint says, the grey band fed to all three inputs: what a file of three copies of it gives
    with rasterio.open(pan) as src:
        profile, band = src.profile, src.read(1)
    copies = tmp_path / "pan3.tif"
    with rasterio.open(copies, "w", **{**profile, "count": 3}) as dst:
        dst.write(np.stack([band] * 3))
    segment(rgb, pan, tmp_path / "repeated.tif", SegmentOptions(tile=128, bands=(1, 1, 1)))
    segment(rgb, copies, tmp_path / "copies.tif", SegmentOptions(tile=128))
    with rasterio.open(tmp_path / "repeated.tif") as a, rasterio.open(tmp_path / "copies.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    with pytest.raises(BandMismatchError, match="--bands"):
        segment(grey, data_dir / "geotiff" / "RGB.byte.tif", tmp_path / "x.tif")
    out2 = tmp_path / "band2.tif"
    segment(grey, data_dir / "geotiff" / "RGB.byte.tif", out2, SegmentOptions(tile=64, bands=(2,)))
    assert out2.exists()
    bytes_only = checkpoint(tmp_path, "test-pool", bands=1, classes=2, name="uint8-only", dtypes=["uint8"])
    with pytest.raises(DtypeError, match="uint16"):
        segment(bytes_only, pan, tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()


def test_cog_and_probabilities(tmp_path, data_dir, rgb_model):
    out, probs = tmp_path / "mask.tif", tmp_path / "probs.tif"
    segment(rgb_model, data_dir / "geotiff" / "cogeo.tif", out, SegmentOptions(tile=128, cog=True), probabilities=probs)
    with rasterio.open(out) as dst:
        assert dst.overviews(1), "a COG has overviews"
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert dst.colormap(1)[2][:3] == (0, 255, 0)
        mask = dst.read(1)
    with rasterio.open(probs) as p:
        assert p.count == 4 and p.dtypes[0] == "uint8"
        assert p.overviews(1)
        np.testing.assert_array_equal(p.read().argmax(0)[mask != 255], mask[mask != 255])


def test_tta_inverts_its_flips(tmp_path, raster_factory):
    """Flip test-time augmentation on a pointwise known-answer net: every flipped prediction must be flipped
    back onto its pixel, so the averaged result is still exactly the input (a missed inverse flip shows)."""
    model = checkpoint(tmp_path, "test-shift", bands=1, classes=8, dy=0, dx=0, halo=8, multiple=4)
    path = raster_factory(37, 53, high=8)
    out, probs = tmp_path / "tta.tif", tmp_path / "tta.probs.tif"
    segment(model, path, out, SegmentOptions(tile=16, tta=True), probabilities=probs)
    with rasterio.open(path) as src, rasterio.open(out) as dst, rasterio.open(probs) as p:
        image = src.read(1)
        np.testing.assert_array_equal(dst.read(1), image)
        assert (p.read().argmax(0) == image).all()


def test_aperio_svs_level0(tmp_path, data_dir, rgb_model):
    svs = data_dir / "large" / "cmu_small_region.svs"
    out = tmp_path / "svs.tif"
    segment(rgb_model, svs, out, SegmentOptions(tile=256, batch=2))
    with rasterio.open(svs) as src, rasterio.open(out) as dst:
        assert (dst.width, dst.height) == (src.width, src.height) == (2220, 2967)


def test_pixel_size_warning(tmp_path, data_dir):
    """A 0.5 m model on a 300 m scene: resampling would invent detail, so it is refused; read natively, the
    run warns."""
    model = checkpoint(tmp_path, "test-pool", bands=3, classes=2, name="fine", pixel_size=0.5)
    source = data_dir / "geotiff" / "rgb-byte-tenth.tif"
    with pytest.raises(PixelSizeError, match="coarser than the model"):
        segment(model, source, tmp_path / "m.tif", SegmentOptions(tile=32))
    result = segment(model, source, tmp_path / "m.tif", SegmentOptions(tile=32, pixel_size_policy="native"))
    assert result.warnings and "pixel size" in result.warnings[0]
