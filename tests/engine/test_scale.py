"""Reading at the model's pixel size: an input at another scale gives the mask the model gives at its own.

The ISBI 2012 image is upsampled x2 (bilinear) and tagged 2 nm/px; ``unet-em`` (4 nm) reads it resampled back
to 4 nm, and its mask, written on the input's grid and reduced x2, must agree with the mask of the original
image on at least 97 % of the pixels; read as it is (``native``), it must not. The same for a GeoTIFF pair of
a real aerial scene at two ground sample distances (the coarse one made by rasterio), with ``unet-aerial``
given the coarse pixel size.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.enums import Resampling
from rasterio.warp import reproject

from tileseg import models
from tileseg.engine import SegmentOptions, segment

FAST = {"precision": "fp32", "compile": "off"}


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _agreement(fine: np.ndarray, coarse: np.ndarray) -> float:
    """The share of ``coarse`` pixels equal to the x2-finer mask reduced x2 (the pixel under each centre)."""
    reduced = fine[::2, ::2][: coarse.shape[0], : coarse.shape[1]]
    return float((reduced == coarse).mean())


@pytest.fixture(scope="module")
def isbi_pair(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("isbi")
    image = np.asarray(Image.open(data_dir / "isbi2012" / "test" / "images" / "0.png").convert("L"))[:256, :256]
    big = np.asarray(Image.fromarray(image).resize((512, 512), Image.BILINEAR))
    original, upsampled = folder / "original.tif", folder / "upsampled.tif"
    with rasterio.open(original, "w", driver="GTiff", width=256, height=256, count=1, dtype="uint8") as dst:
        dst.write(image[None])
    with rasterio.open(upsampled, "w", driver="GTiff", width=512, height=512, count=1, dtype="uint8") as dst:
        dst.write(big[None])
        per_cm = f"{0.01 / 2e-9:.1f}"  # 2 nm a pixel, as pixels per centimetre
        dst.update_tags(TIFFTAG_XRESOLUTION=per_cm, TIFFTAG_YRESOLUTION=per_cm, TIFFTAG_RESOLUTIONUNIT="3")
    return original, upsampled


@pytest.mark.slow
def test_isbi_upsampled_is_read_at_the_models_pixel_size(tmp_path, isbi_pair):
    original, upsampled = isbi_pair
    model = models.load("unet-em")
    assert model.spec.input.pixel_size == pytest.approx(4e-9)
    reference = _read(segment(model, original, tmp_path / "ref.tif", SegmentOptions(**FAST)).output)

    result = segment(model, upsampled, tmp_path / "resampled.tif", SegmentOptions(**FAST))
    assert result.pixel_size.input_pixel_size_m == pytest.approx(2e-9, rel=1e-6)
    assert result.pixel_size.resampled and result.pixel_size.grid == [256, 256]
    with rasterio.open(result.output) as dst:
        assert (dst.width, dst.height) == (512, 512)  # written on the input's grid
        assert json.loads(dst.tags()["TILESEG_PIXEL_SIZE"])["read_pixel_size_m"] == pytest.approx(4e-9)
    resampled = _read(result.output)
    assert _agreement(resampled, reference) >= 0.97

    native = segment(model, upsampled, tmp_path / "native.tif", SegmentOptions(pixel_size_policy="native", **FAST))
    assert native.pixel_size.policy == "native" and not native.pixel_size.resampled
    assert native.warnings  # read at half the model's pixel size: said
    assert _agreement(_read(native.output), reference) < 0.97


@pytest.mark.slow
def test_isbi_model_grid_output(tmp_path, isbi_pair):
    original, upsampled = isbi_pair
    model = models.load("unet-em")
    reference = _read(segment(model, original, tmp_path / "ref.tif", SegmentOptions(**FAST)).output)
    result = segment(model, upsampled, tmp_path / "model.tif", SegmentOptions(output_grid="model", **FAST))
    mask = _read(result.output)
    assert mask.shape == (256, 256)
    assert float((mask == reference).mean()) >= 0.97


@pytest.fixture(scope="module")
def geotiff_pair(tmp_path_factory, data_dir):
    """The aerial COG's 768^2 corner at its own 0.6 m, and the same made by rasterio at 1.2 m (average)."""
    folder = tmp_path_factory.mktemp("geo")
    fine, coarse = folder / "fine.tif", folder / "coarse.tif"
    with rasterio.open(data_dir / "geotiff" / "cogeo.tif") as src:
        window = ((0, 768), (0, 768))
        data = src.read(window=window)
        transform, crs = src.window_transform(window), src.crs
    # from the full-resolution pixels, not from the COG's own overviews (which a decimated read would use)
    small = np.zeros((3, 384, 384), dtype=np.uint8)
    reproject(
        data,
        small,
        src_transform=transform,
        src_crs=crs,
        dst_transform=transform @ Affine.scale(2),
        dst_crs=crs,
        resampling=Resampling.average,
    )
    profile = {"driver": "GTiff", "count": 3, "dtype": "uint8", "crs": crs}
    with rasterio.open(fine, "w", width=768, height=768, transform=transform, **profile) as dst:
        dst.write(data)
    with rasterio.open(coarse, "w", width=384, height=384, transform=transform @ Affine.scale(2), **profile) as dst:
        dst.write(small)
    return coarse, fine, 2 * abs(transform.a)


@pytest.mark.slow
def test_geotiff_pair_at_two_ground_sample_distances(tmp_path, geotiff_pair):
    coarse, fine, gsd = geotiff_pair
    model = models.load("unet-aerial")  # its card states no pixel size (Dubai's is not published): given one here
    model.spec = dataclasses.replace(model.spec, input=dataclasses.replace(model.spec.input, pixel_size=gsd))
    reference = _read(segment(model, coarse, tmp_path / "ref.tif", SegmentOptions(**FAST)).output)
    assert np.bincount(reference.ravel()).max() < 0.9 * reference.size  # several classes: agreement means something

    result = segment(model, fine, tmp_path / "resampled.tif", SegmentOptions(**FAST))
    assert result.pixel_size.input_pixel_size_m == pytest.approx(gsd / 2)
    assert result.pixel_size.grid == [384, 384]
    with rasterio.open(result.output) as dst, rasterio.open(fine) as src:
        assert dst.transform == src.transform and dst.crs == src.crs  # on the input's grid, on the map
    assert _agreement(_read(result.output), reference) >= 0.97

    native = segment(model, fine, tmp_path / "native.tif", SegmentOptions(pixel_size_policy="native", **FAST))
    assert _agreement(_read(native.output), reference) < 0.97
