"""Polygons of the mask (tileseg.engine.vectors.sink): exact (burned back they give the mask), one per connected
region (as scipy.ndimage.label counts them), and whole across strip seams; written, read back with pyogrio."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
from PIL import Image
from rasterio.crs import CRS
from scipy import ndimage

from tileseg import models
from tileseg.engine import segment
from tileseg.engine.errors import OptionsError
from tileseg.engine.options import Connectivity, SegmentOptions
from tileseg.engine.vectors.polygons import StripPolygonizer
from tileseg.engine.vectors.sink import check_vector_path, export

STRUCTURE = {Connectivity.FOUR: None, Connectivity.EIGHT: np.ones((3, 3), bool)}


def polygonize(mask: np.ndarray, classes, connectivity: Connectivity, step: int | None = None):
    """Every region of ``mask``, fed to the polygonizer ``step`` rows at a time (None: all at once)."""
    polygonizer = StripPolygonizer(mask.shape[1], classes, connectivity, {})
    step = step or mask.shape[0]
    regions = []
    for y in range(0, mask.shape[0], step):
        regions += polygonizer.add(y, mask[y : y + step])
    return regions + polygonizer.finish()


def assert_exact(mask: np.ndarray, classes, connectivity: Connectivity, step: int | None = None) -> list:
    """Burned back, each class's polygons give its pixels; one polygon per connected component."""
    regions = polygonize(mask, classes, connectivity, step)
    for cls in classes:
        mine = [r for r in regions if r.cls == cls]
        assert len(mine) == ndimage.label(mask == cls, STRUCTURE[connectivity])[1]
        shapes = [r.geometry() for r in mine]
        assert all(shapely.is_valid(s) for s in shapes)
        burned = np.zeros(mask.shape, np.uint8)
        if shapes:
            burned = rasterio.features.rasterize([(s, 1) for s in shapes], out_shape=mask.shape, dtype=np.uint8)
        np.testing.assert_array_equal(burned, (mask == cls).astype(np.uint8))
        assert sum(s.area for s in shapes) == (mask == cls).sum()
    return regions


def tricky_mask() -> np.ndarray:
    """Holes, an island in a hole, a hole touching the outside at a corner, diagonal touches, three classes."""
    mask = np.zeros((40, 40), np.uint8)
    mask[2:20, 2:20] = 1
    mask[6:16, 6:16] = 0  # a hole
    mask[9:13, 9:13] = 2  # an island of another class in it
    mask[10:12, 10:12] = 1  # and one of the first class in that
    mask[25, 25] = mask[26, 26] = mask[27, 25] = 1  # diagonal touches only
    mask[30:36, 2:8] = 3
    mask[31:35, 3:7] = 0
    mask[31, 3] = 3  # a notch
    mask[32:34, 7] = 0  # the hole opens to the right edge
    mask[22:24, 30:32] = 2
    mask[24:26, 32:34] = 2  # touches the block above at a corner
    return mask


@pytest.mark.parametrize("connectivity", list(Connectivity))
@pytest.mark.parametrize("step", [1, 3, 7, None])
def test_synthetic_masks_are_exact(connectivity, step):
    assert_exact(tricky_mask(), [1, 2, 3], connectivity, step)
    rng = np.random.default_rng(7)
    noisy = (rng.random((48, 37)) < 0.5) * rng.integers(1, 3, (48, 37))
    assert_exact(noisy.astype(np.uint8), [1, 2], connectivity, step)


def test_diagonal_touches_join_only_under_8_connectivity():
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = 1
    assert len(polygonize(mask, [1], Connectivity.FOUR, step=1)) == 3
    eight = polygonize(mask, [1], Connectivity.EIGHT, step=1)
    assert len(eight) == 1 and eight[0].pixels == 3


@pytest.mark.parametrize("connectivity", list(Connectivity))
def test_regions_across_many_strips_are_one_polygon_each(connectivity):
    mask = np.zeros((300, 64), np.uint8)
    mask[5:295, 4:8] = 1  # a long bar through every strip
    for y in range(10, 290, 3):  # a staircase: each step touches the next at a corner only
        mask[y : y + 3, 20 + (y - 10) // 3 % 30] = 2
    mask[0:300:2, 50] = 1  # dashes: many small regions
    mask[40:260, 56:62] = 1
    mask[60:240, 58:60] = 0  # a long hole inside a long region
    whole = polygonize(mask, [1, 2], connectivity)
    by_key = {(r.cls, r.pixels, r.geometry().bounds): r.geometry() for r in whole}
    for step in (1, 8, 64):
        regions = assert_exact(mask, [1, 2], connectivity, step)
        assert len(regions) == len(whole)
        for region in regions:
            shape = region.geometry()
            assert shapely.equals(shape, by_key[(region.cls, region.pixels, shape.bounds)])
    staircase = [r for r in whole if r.cls == 2]
    # 94 steps, their column wrapping every 30: 4 staircases of corner touches, or 94 separate steps
    assert len(staircase) == (4 if connectivity is Connectivity.EIGHT else 94)
    # GDAL's polygons of the whole mask at once are the same point sets (4-connectivity: GDAL's own)
    if connectivity is Connectivity.FOUR:
        gdal = [
            shapely.geometry.shape(g)
            for g, v in rasterio.features.shapes(mask, mask=mask == 1, connectivity=4)
            if v == 1
        ]
        mine = [r.geometry() for r in whole if r.cls == 1]
        assert len(gdal) == len(mine)
        assert all(any(shapely.equals(a, b) for b in mine) for a in gdal)


def test_open_regions_only_are_held():
    mask = np.zeros((2000, 32), np.uint8)
    mask[:, 3] = 1  # one region through the whole mask
    mask[::4, 10:20] = 2  # many short-lived ones
    polygonizer = StripPolygonizer(32, [1, 2], Connectivity.FOUR, {})
    most_open = 0
    for y in range(0, 2000, 16):
        polygonizer.add(y, mask[y : y + 16])
        most_open = max(most_open, len(polygonizer.open))
    assert most_open == 1
    assert len(polygonizer.finish()) == 1


def test_real_isbi_label_is_exact(data_dir):
    label = np.asarray(Image.open(sorted((data_dir / "isbi2012" / "train" / "labels").iterdir())[0]))
    mask = (label > 127).astype(np.uint8)  # 1 = cell, 0 = membrane
    for connectivity in Connectivity:
        assert_exact(mask, [1], connectivity, step=64)


def test_real_aerial_mask_is_exact(data_dir):
    path = sorted((data_dir / "dubai_aerial" / "tile1" / "masks").iterdir())[0]
    mask = np.asarray(Image.open(path))[:400]
    assert_exact(np.ascontiguousarray(mask), [1, 2, 3, 4, 5], Connectivity.FOUR, step=50)


def test_segment_writes_georeferenced_gpkg(tmp_path, data_dir):
    model = models.load("unet-aerial", device="cpu")
    source = data_dir / "geotiff" / "rgb-byte-tenth.tif"
    options = SegmentOptions(tile=32, blend="gaussian")  # blended: probabilities are computed
    segment(model, source, tmp_path / "mask.tif", options, vectors=tmp_path / "out" / "regions.gpkg")
    info = pyogrio.read_info(tmp_path / "out" / "regions.gpkg")
    with rasterio.open(source) as src, rasterio.open(tmp_path / "mask.tif") as mask_file:
        assert CRS.from_user_input(info["crs"]) == src.crs
        mask, transform = mask_file.read(1), mask_file.transform
        pixel_area = abs(transform.a * transform.e)
    _, _, wkb, values = pyogrio.raw.read(tmp_path / "out" / "regions.gpkg")
    fields = dict(zip(info["fields"], values))
    assert set(fields) == {"class", "name", "color", "area", "probability"}
    assert info["layer_metadata"]["area_unit"] == "m²"
    shapes = shapely.from_wkb(wkb)
    assert set(np.unique(fields["class"])) == set(np.unique(mask)) - {255}  # 255: nodata
    for cls in range(1, 6):
        mine = shapes[fields["class"] == cls]
        assert len(mine) == ndimage.label(mask == cls)[1]
        burned = rasterio.features.rasterize(mine, out_shape=mask.shape, transform=transform, dtype=np.uint8)
        np.testing.assert_array_equal(burned, (mask == cls).astype(np.uint8))
    np.testing.assert_allclose(fields["area"], shapely.area(shapes), rtol=1e-9)
    assert fields["area"].min() >= pixel_area - 1e-6
    assert ((fields["probability"] > 0) & (fields["probability"] <= 1)).all()


def test_qupath_geojson_in_pixel_coordinates(tmp_path, data_dir):
    model = models.load("unet-em", device="cpu")
    source = sorted((data_dir / "isbi2012" / "test" / "images").iterdir())[0]
    options = SegmentOptions(min_area=20)
    segment(model, source, tmp_path / "mask.tif", options, vectors=tmp_path / "cells.geojson")
    collection = json.loads((tmp_path / "cells.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and "crs" not in collection
    features = collection["features"]
    with rasterio.open(tmp_path / "mask.tif") as mask_file:
        mask = mask_file.read(1)
    labels, count = ndimage.label(mask == 1)
    sizes = np.bincount(labels.ravel())[1:]
    assert len(features) == (sizes >= 20).sum() > 0  # membranes are background; specks under 20 px² left out
    for feature in features:
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"] == {"name": "cell", "color": [255, 255, 255]}
        assert props["class"] == 1 and props["area"] >= 20
        shape = shapely.geometry.shape(feature["geometry"])
        assert shape.area == props["area"] and 0 <= shape.bounds[0] and shape.bounds[2] <= mask.shape[1]
    assert pyogrio.read_info(tmp_path / "cells.geojson")["features"] == len(features)


def test_export_to_flatgeobuf_keeps_crs(tmp_path, data_dir):
    model = models.load("unet-aerial", device="cpu")
    source = data_dir / "geotiff" / "rgb-byte-tenth.tif"
    segment(model, source, tmp_path / "mask.tif", SegmentOptions(tile=32), vectors=tmp_path / "regions.gpkg")
    export(tmp_path / "regions.gpkg", tmp_path / "regions.fgb")
    export(tmp_path / "regions.gpkg", tmp_path / "regions.geojson")
    gpkg, fgb = pyogrio.read_info(tmp_path / "regions.gpkg"), pyogrio.read_info(tmp_path / "regions.fgb")
    assert fgb["features"] == gpkg["features"] > 0
    with rasterio.open(source) as src:
        for layer in ("regions.gpkg", "regions.fgb", "regions.geojson"):
            assert CRS.from_user_input(pyogrio.read_info(tmp_path / layer)["crs"]) == src.crs, layer
    assert "probability" not in gpkg["fields"]  # crop mode without probabilities: none computed


def test_bad_vector_paths_are_refused(tmp_path):
    with pytest.raises(OptionsError, match="no known vector format"):
        check_vector_path(tmp_path / "regions.shp")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # (tests run as root here: a folder's mode bits would not stop a write)
    with pytest.raises(OptionsError, match="cannot write"):
        check_vector_path(blocker / "sub" / "regions.gpkg")
    assert check_vector_path(tmp_path / "new" / "deeper" / "regions.fgb") == "FlatGeobuf"
