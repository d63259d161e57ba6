"""Objects from a whole run with the shipped ``unet-nuclei``, on real nuclei: the label GeoTIFF equals decoding
the written mask at once, at every tile size and in shards; the objects table and the features agree with
scikit-image and with the labels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from skimage.measure import regionprops

from tests.conftest import write_raster
from tests.instances.conftest import mirrored_mosaic
from tileseg import models
from tileseg.engine import SegmentOptions, segment
from tileseg.engine.errors import OptionsError
from tileseg.engine.instances.decode import decode_whole
from tileseg.engine.shards.plan import segment_sharded

EXACT = {"precision": "fp32", "runtime": "torch", "compile": "off"}  # the path every machine computes alike


@pytest.fixture(scope="module")
def nuclei_model():
    return models.load("unet-nuclei")


@pytest.fixture
def mosaic_tif(tmp_path, real_nuclei):
    """A 2x2 mirrored mosaic of a grey and a colour validation image, pixel space (no CRS), as microscopy is."""
    _, grey, _ = real_nuclei[0]
    _, colour, _ = real_nuclei[1]
    row = np.concatenate([grey[:, :, :256], colour[:, :, :256]], axis=2)
    return write_raster(tmp_path / "nuclei.tif", mirrored_mosaic(row, (2, 2)), crs=None, transform=Affine.identity())


def read(path):
    with rasterio.open(path) as src:
        return src.read(1), src.profile, src.tags()


@pytest.mark.parametrize("tile", [48, 256, None])
def test_the_labels_are_the_written_masks_objects_at_every_tile_size(tmp_path, nuclei_model, mosaic_tif, tile):
    options = SegmentOptions(tile=tile or 1024, **EXACT)
    result = segment(nuclei_model, mosaic_tif, tmp_path / "mask.tif", options, instances=tmp_path / "objects.tif")
    mask, _, _ = read(result.output)
    labels, profile, tags = read(result.instances)
    assert profile["dtype"] == "uint32" and labels.shape == mask.shape
    np.testing.assert_array_equal(labels, decode_whole(mask, nuclei_model.spec.instances))
    assert result.objects == {"nucleus": int(labels.max())} and int(tags["TILESEG_OBJECTS"]) == labels.max()
    assert labels.max() > 100


def test_tile_sizes_and_shards_give_the_same_objects(tmp_path, nuclei_model, mosaic_tif):
    runs = {}
    for name, tile in (("small", 48), ("large", 1024)):
        options = SegmentOptions(tile=tile, **EXACT)
        result = segment(
            nuclei_model, mosaic_tif, tmp_path / f"{name}.tif", options, instances=tmp_path / f"{name}-objects.tif"
        )
        runs[name] = read(result.instances)[0]
    options = SegmentOptions(tile=64, **EXACT)
    sharded = segment_sharded(
        nuclei_model,
        mosaic_tif,
        tmp_path / "sharded.tif",
        ["cpu", "cpu"],
        options,
        instances=tmp_path / "sharded-objects.tif",
        objects=tmp_path / "sharded.csv",
    )
    runs["sharded"] = read(sharded.instances)[0]
    np.testing.assert_array_equal(runs["small"], runs["large"])  # the very ids
    np.testing.assert_array_equal(runs["sharded"], runs["large"])
    with open(sharded.objects_table, newline="") as table:
        assert len(list(csv.DictReader(table))) == runs["large"].max()


def test_the_table_and_the_features_measure_what_scikit_image_measures(tmp_path, nuclei_model, mosaic_tif):
    options = SegmentOptions(tile=128, **EXACT)
    result = segment(
        nuclei_model,
        mosaic_tif,
        tmp_path / "mask.tif",
        options,
        vectors=tmp_path / "objects.gpkg",
        instances=tmp_path / "objects.tif",
        objects=tmp_path / "objects.csv",
    )
    labels, _, _ = read(result.instances)
    with rasterio.open(mosaic_tif) as src:
        image = src.read()
    with open(result.objects_table, newline="") as table:
        rows = {int(r["id"]): r for r in csv.DictReader(table)}
    props = regionprops(labels.astype(np.int64), intensity_image=np.moveaxis(image, 0, -1))
    assert sorted(rows) == [p.label for p in props]
    for region in props:
        row = rows[region.label]
        assert row["name"] == "nucleus" and int(row["pixels"]) == region.area
        assert float(row["row"]) == pytest.approx(region.centroid[0], abs=1e-9)
        assert float(row["col"]) == pytest.approx(region.centroid[1], abs=1e-9)
        assert float(row["perimeter_px"]) == pytest.approx(region.perimeter, abs=1e-9)
        assert float(row["area"]) == region.area  # pixel space: px²
        for band in range(3):
            assert float(row[f"band_{band + 1}"]) == pytest.approx(region.intensity_mean[band], rel=1e-6)
        assert 0.5 < float(row["probability"]) <= 1.0
    info = pyogrio.read_info(result.vectors)
    assert info["features"] == len(rows)
    frame = pyogrio.read_dataframe(result.vectors) if _has_geopandas() else None
    _, _, wkb, values = pyogrio.raw.read(result.vectors)
    fields = dict(zip(info["fields"], values))

    burnt = rasterize(
        zip(shapely.from_wkb(wkb), fields["id"].tolist()),
        out_shape=labels.shape,
        dtype="uint32",
        transform=Affine.identity(),
    )
    np.testing.assert_array_equal(burnt, labels)
    assert frame is None or len(frame) == len(rows)


def _has_geopandas() -> bool:
    try:
        import geopandas  # noqa: F401
    except ImportError:
        return False
    return True


def test_qupath_gets_detections_with_measurements(tmp_path, nuclei_model, mosaic_tif):
    options = SegmentOptions(tile=256, **EXACT)
    result = segment(nuclei_model, mosaic_tif, tmp_path / "mask.tif", options, vectors=tmp_path / "objects.geojson")
    features = json.loads(result.vectors.read_text())["features"]
    assert len(features) > 100
    first = features[0]["properties"]
    assert first["objectType"] == "detection"
    assert first["classification"]["name"] == "nucleus"
    assert {"pixels", "area", "perimeter", "probability"} <= set(first["measurements"])
    assert isinstance(first["id"], int)


def test_georeferenced_objects_have_map_centroids_and_areas(tmp_path, nuclei_model, real_nuclei):
    _, image, _ = real_nuclei[0]
    path = write_raster(tmp_path / "geo.tif", image)  # UTM, 30 m pixels
    result = segment(nuclei_model, path, tmp_path / "mask.tif", SegmentOptions(**EXACT), objects=tmp_path / "o.csv")
    with open(result.objects_table, newline="") as table:
        row = next(csv.DictReader(table))
    assert float(row["area"]) == pytest.approx(int(row["pixels"]) * 900)
    assert float(row["centroid_x"]) == pytest.approx(500000 + 30 * (float(row["col"]) + 0.5))
    assert float(row["centroid_y"]) == pytest.approx(4000000 - 30 * (float(row["row"]) + 0.5))


def test_instances_of_a_model_without_them_are_refused_naming_those_with_them(tmp_path, mosaic_tif):
    model = models.load("unet-em")
    with pytest.raises(OptionsError, match="unet-em has no instance output.*unet-nuclei"):
        segment(model, mosaic_tif, tmp_path / "mask.tif", instances=tmp_path / "objects.tif")
    assert not list(tmp_path.glob("mask*"))
