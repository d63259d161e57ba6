"""Vectors through the real server: asked for with `vectors=true`, fetched as GeoPackage or GeoJSON, the same
polygons as the command line's; a job that did not ask has none (404 no_such_result)."""

from __future__ import annotations

import json

import pyogrio
import shapely
from rasterio.crs import CRS

from tests.api.conftest import submit, wait_for
from tests.api.test_flow import download, run_cli


def test_vectors_of_a_geotiff_job(client, weights, data_dir, tmp_path):
    image = data_dir / "geotiff" / "RGB.byte.tif"
    response = submit(client, image, tile=128, vectors=True, min_area=1000)
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["options"]["vectors"] is True and job["options"]["min_area"] == 1000
    assert job["links"]["vectors"] == f"/jobs/{job['id']}/vectors"
    served = download(client, job["links"]["vectors"], tmp_path / "served.gpkg")
    run_cli(
        weights, image, tmp_path / "cli.tif", "rgb-test", "--tile", "128", "--min-area", "1000",
        "--vectors", str(tmp_path / "cli.gpkg"),
    )  # fmt: skip
    a, b = pyogrio.raw.read(served), pyogrio.raw.read(tmp_path / "cli.gpkg")
    assert len(a[2]) == len(b[2]) > 0
    assert all(shapely.equals(x, y) for x, y in zip(shapely.from_wkb(a[2]), shapely.from_wkb(b[2])))
    assert CRS.from_user_input(pyogrio.read_info(served)["crs"]) == CRS.from_epsg(32618)
    as_json = client.get(job["links"]["vectors"], params={"format": "geojson"})
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/geo+json"
    collection = json.loads(as_json.content)
    assert len(collection["features"]) == len(a[2])
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32618"
    assert min(f["properties"]["area"] for f in collection["features"]) >= 1000


def test_pixel_space_job_gives_qupath_geojson(client, data_dir):
    image = data_dir / "isbi2012" / "train" / "images" / "0.png"
    job = wait_for(client, submit(client, image, model="grey-test", tile=128, vectors=True).json()["id"])
    assert job["status"] == "succeeded", job
    response = client.get(job["links"]["vectors"], params={"format": "geojson"})
    assert response.status_code == 200
    features = json.loads(response.content)["features"]
    assert features and all(f["properties"]["objectType"] == "annotation" for f in features)
    assert all(set(f["properties"]["classification"]) == {"name", "color"} for f in features)
    assert max(shapely.geometry.shape(f["geometry"]).bounds[3] for f in features) <= 512


def test_no_vectors_unless_asked(client, data_dir):
    image = data_dir / "isbi2012" / "train" / "images" / "0.png"
    job = wait_for(client, submit(client, image, model="grey-test", tile=128).json()["id"])
    assert job["links"]["vectors"] is None
    response = client.get(f"/jobs/{job['id']}/vectors")
    assert response.status_code == 404 and response.json()["error"]["code"] == "no_such_result"
    bad = client.get(f"/jobs/{job['id']}/vectors", params={"format": "shp"})
    assert bad.status_code in (400, 422) and "error" in bad.json()
