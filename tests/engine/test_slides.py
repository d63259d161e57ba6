"""Whole-slide images through OpenSlide, pyramid levels, pixel sizes from metadata, regions of interest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
import rasterio
import tifffile
from affine import Affine

from tests.conftest import write_raster
from tests.engine.nets import checkpoint
from tileseg.engine import SegmentOptions, segment
from tileseg.engine.errors import PixelSizeError, RoiError, UnreadableInputError
from tileseg.engine.io import pixelsize
from tileseg.engine.io.inputs import open_input
from tileseg.engine.resolution import plan_resolution

FAST = {"precision": "fp32", "compile": "off", "batch": 2}


@pytest.fixture
def rgb(tmp_path):
    return checkpoint(tmp_path, "test-pool", bands=3, classes=2, name="rgb")


def _ome(path, size_um):
    data = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    tifffile.imwrite(
        path,
        data,
        ome=True,
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": size_um, "PhysicalSizeY": size_um},
    )
    return path


def _resolution_tiff(path, per_cm):
    write_raster(path, np.zeros((3, 32, 32), np.uint8), crs=None, transform=Affine.identity())
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(TIFFTAG_XRESOLUTION=str(per_cm), TIFFTAG_YRESOLUTION=str(per_cm), TIFFTAG_RESOLUTIONUNIT="3")
    return path


# (file, expected metres or None, words in the source) for every way an input says its pixel size
TABLE = [
    ("wsi/small.svs", 0.499e-6, "aperio"),
    ("wsi/boxes_0.dcm", 0.499e-6, "dicom"),
    ("large/cmu_small_region.svs", 0.499e-6, "aperio"),
    ("geotiff/spacenet_atlanta_pan_uint16.tif", 0.5, "projected"),
    ("geotiff/cogeo.tif", 0.5972, "projected"),
    ("geotiff/spacenet_vegas_pan_uint16_epsg4326.tif", 0.2713, "geographic"),
    ("wsi/boxes.tiff", None, "none"),  # 72 dpi: a writer's default, not a measurement
]


@pytest.mark.parametrize(("name", "metres", "source"), TABLE)
def test_pixel_size_from_metadata(data_dir, rgb, name, metres, source):
    spec = rgb.spec if "pan" not in name else checkpoint_spec_1band(rgb)
    with open_input(data_dir / name, spec) as src:
        measured = src.pixel_size
    assert source in measured.source
    if metres is None:
        assert measured.metres is None and "72 dpi" in measured.note
    else:
        assert measured.metres == pytest.approx(metres, rel=2e-3)


def checkpoint_spec_1band(model):
    import dataclasses

    return dataclasses.replace(
        model.spec,
        input=dataclasses.replace(model.spec.input, bands=1, mean=(0.0,), std=(1.0,)),
    )


def test_pixel_size_from_ome_and_resolution_tags(tmp_path, rgb):
    with open_input(_ome(tmp_path / "a.ome.tif", 0.25), rgb.spec) as src:
        assert src.pixel_size.metres == pytest.approx(0.25e-6) and "OME" in src.pixel_size.source
    with open_input(_resolution_tiff(tmp_path / "r.tif", 40000), rgb.spec) as src:  # 40000 px/cm = 0.25 µm
        assert src.pixel_size.metres == pytest.approx(0.25e-6) and "resolution" in src.pixel_size.source
    with rasterio.open(tmp_path / "r.tif") as ds:
        assert pixelsize.from_dataset(ds).metres == pytest.approx(0.25e-6)


def test_strict_refuses_unknown_and_option_overrides(tmp_path, data_dir, rgb):
    spec = rgb.spec
    import dataclasses

    spec = dataclasses.replace(spec, input=dataclasses.replace(spec.input, pixel_size=1e-6))
    with open_input(data_dir / "wsi" / "boxes.tiff", spec) as src:
        with pytest.raises(PixelSizeError, match="72 dpi"):
            plan_resolution(src.levels, src.pixel_size, spec, "strict")
        stated = plan_resolution(src.levels, src.pixel_size, spec, "strict", stated=1e-6)
    assert stated.input.source.startswith("stated") and not stated.resampled and stated.level == 0
    with pytest.raises(ValueError, match="unit"):
        SegmentOptions(pixel_size="0.25")


def test_level_matching_the_model_is_read(tmp_path, data_dir, rgb):
    """boxes.tiff has levels at downsamples 1, 2, 4, 8: stated at 1 µm for a 2 µm model, level 1 is read
    as it is, and level 0 is never decoded."""
    import dataclasses

    rgb.spec = dataclasses.replace(rgb.spec, input=dataclasses.replace(rgb.spec.input, pixel_size=2e-6))
    result = segment(rgb, data_dir / "wsi" / "boxes.tiff", tmp_path / "m.tif", SegmentOptions(pixel_size="1um", **FAST))
    res = result.pixel_size
    assert res.level == 1 and not res.resampled and res.grid == [125, 150]
    assert res.pixels_read is not None and res.pixels_read.level_0 == 0
    assert 150 * 125 <= res.pixels_read.grid <= 4 * 150 * 125  # the level, with its mirrored context
    with rasterio.open(result.output) as dst:
        assert (dst.height, dst.width) == (250, 300)  # written on the input's grid


@pytest.mark.parametrize("name", ["wsi/small.svs", "wsi/boxes_0.dcm"])
def test_slide_mask_is_a_pyramidal_tiff_openslide_opens(tmp_path, data_dir, rgb, name):
    out = tmp_path / "mask.tif"
    result = segment(rgb, data_dir / name, out, SegmentOptions(tile=32, **FAST))
    assert result.input.driver.startswith("OpenSlide:")
    with rasterio.open(out) as dst:
        assert (dst.width, dst.height) == (16, 16)
        assert dst.tags()["TIFFTAG_RESOLUTIONUNIT"].startswith("3")
        assert float(dst.tags()["TIFFTAG_XRESOLUTION"]) == pytest.approx(0.01 / 0.499e-6, rel=1e-3)
    slide = openslide.OpenSlide(str(out))
    assert slide.dimensions == (16, 16)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.499, rel=1e-3)


@pytest.mark.slow
def test_cmu_slide_roi_auto_skips_the_glass(tmp_path, data_dir, rgb):
    svs = data_dir / "large" / "cmu_small_region.svs"
    full = segment(rgb, svs, tmp_path / "full.tif", SegmentOptions(tile=256, **FAST))
    roi = segment(rgb, svs, tmp_path / "roi.tif", SegmentOptions(tile=256, roi="auto", **FAST))
    assert roi.roi.skipped_share > 0.05 and roi.roi.tiles_skipped == roi.tiles_skipped
    assert 0.1 < roi.roi.area_share < 0.95
    a, b = (rasterio.open(p).read(1) for p in (full.output, roi.output))
    tissue = b != 255
    assert 0.1 < tissue.mean() < 0.95
    assert np.array_equal(a[tissue], b[tissue])  # inside the region, the very mask of the run without one
    with rasterio.open(roi.output) as dst:
        assert json.loads(dst.tags()["TILESEG_ROI"])["source"] == "auto"


def test_roi_file_in_pixel_and_map_coordinates(tmp_path, data_dir, rgb):
    src = data_dir / "geotiff" / "RGB.byte.tif"
    with rasterio.open(src) as ds:
        t = ds.transform
        left, top = t.c, t.f
        right, bottom = t.c + t.a * ds.width / 2, t.f + t.e * ds.height / 2
    square = {
        "type": "Polygon",
        "coordinates": [[[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]],
    }
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": square}]}))
    result = segment(rgb, src, tmp_path / "m.tif", SegmentOptions(tile=64, roi=str(path), **FAST))
    mask = rasterio.open(result.output).read(1)
    assert (mask[:300, :300] != 255).mean() > 0.5 and (mask[450:, 450:] == 255).all()
    assert result.roi.tiles_skipped > 0


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"type": "FeatureCollection", "features": []}, "no polygons"),
        (
            {
                "type": "FeatureCollection",
                "crs": {"type": "name", "properties": {"name": "EPSG:4326"}},
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
                    }
                ],
            },
            "EPSG:4326",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
            "do not cover",
        ),
    ],
)
def test_bad_roi_files(tmp_path, data_dir, rgb, content, match):
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps(content))
    out = tmp_path / "m.tif"
    with pytest.raises(RoiError, match=match):
        segment(rgb, data_dir / "geotiff" / "RGB.byte.tif", out, SegmentOptions(roi=str(path), **FAST))
    assert not out.exists() and not list(tmp_path.glob(".m.tif*"))


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("wsi/unreadable.svs", "could not be read"),
        ("wsi/boxes_1.dcm", "No pyramid levels"),  # copied alone: the thumbnail without its slide's level
        ("wsi/unopenable.tiff", ""),
    ],
)
def test_corrupt_slides_are_refused(tmp_path, data_dir, rgb, name, match):
    out, source = tmp_path / "m.tif", tmp_path / Path(name).name
    shutil.copyfile(data_dir / name, source)  # alone in its folder: a DICOM series finds its other files
    with pytest.raises(UnreadableInputError, match=match):
        segment(rgb, source, out, SegmentOptions(tile=32, **FAST))
    assert not out.exists()
