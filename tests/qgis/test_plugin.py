"""``tileseg:segment`` in QGIS, against a real server: listed by QGIS, the command line's mask pixel for
pixel, the server's own words for a wrong model or key, cancel reaching the server, and the card's colours
on the loaded layers."""

from __future__ import annotations

import json
import sqlite3

from tests.api.conftest import KEY_A, wait_for
from tests.api.objects import nuclei_server, nuclei_weights, read_labels, write_nuclei  # noqa: F401 (fixtures)
from tests.api.test_flow import assert_same_raster, run_cli


def test_the_algorithm_is_listed(qgis_process):
    listed = qgis_process("list")
    assert listed.returncode == 0, listed.output
    assert "tileseg:segment" in listed.output, listed.output[-3000:]
    help_ = qgis_process("help", "tileseg:segment")
    parameters = ("INPUT", "MODEL", "SERVER", "API_KEY", "OUTPUT", "VECTORS", "OBJECTS", "INSTANCES", "TILE")
    for parameter in (*parameters, "ROI_AUTO", "PIXEL_SIZE"):
        assert parameter in help_.output, (parameter, help_.output)


def test_the_mask_is_the_command_lines(qgis_process, server, weights, data_dir, tmp_path):
    image = data_dir / "geotiff" / "RGB.byte.tif"
    mask, polygons = tmp_path / "qgis.tif", tmp_path / "qgis.gpkg"
    done = qgis_process(
        "run",
        "tileseg:segment",
        "--",
        f"INPUT={image}",
        "MODEL=rgb-test",
        f"SERVER={server.url}",
        f"API_KEY={KEY_A}",
        "TILE=128",
        f"OUTPUT={mask}",
        f"VECTORS={polygons}",
    )
    assert done.returncode == 0, done.output
    assert_same_raster(mask, run_cli(weights, image, tmp_path / "cli.tif", "rgb-test", "--tile", "128"))
    with sqlite3.connect(polygons) as db:  # a GeoPackage: the server's polygons, with their class
        (table,) = db.execute("SELECT table_name FROM gpkg_contents WHERE data_type = 'features'").fetchone()
        classes = {row[0] for row in db.execute(f'SELECT DISTINCT "class" FROM "{table}"')}
    assert classes and classes <= {1, 2, 3}, classes


def test_a_wrong_model_fails_with_the_servers_models(qgis_process, server, data_dir, tmp_path):
    done = qgis_process(
        "run",
        "tileseg:segment",
        "--",
        f"INPUT={data_dir / 'geotiff' / 'RGB.byte.tif'}",
        "MODEL=rgb-tset",
        f"SERVER={server.url}",
        f"API_KEY={KEY_A}",
        f"OUTPUT={tmp_path / 'out.tif'}",
    )
    assert done.returncode != 0
    assert "has no model 'rgb-tset'; it serves: " in done.output and "rgb-test" in done.output, done.output
    assert "Traceback" not in done.output, done.output
    assert not (tmp_path / "out.tif").exists()


def test_a_wrong_key_fails_with_the_servers_message(qgis_process, server, data_dir, tmp_path):
    done = qgis_process(
        "run",
        "tileseg:segment",
        "--",
        f"INPUT={data_dir / 'geotiff' / 'RGB.byte.tif'}",
        "MODEL=rgb-test",
        f"SERVER={server.url}",
        "API_KEY=not-a-key-of-this-server",
        f"OUTPUT={tmp_path / 'out.tif'}",
    )
    assert done.returncode != 0
    with server.client(key="not-a-key-of-this-server") as wrong:
        message = wrong.get("/models").json()["error"]["message"]
    assert f"ERROR:\t{message}" in done.output, done.output
    assert "Traceback" not in done.output, done.output


def test_cancel_in_qgis_cancels_the_job_on_the_server(drive, server, client, data_dir, tmp_path):
    # the slow net: 256 tiles of 32 px in batches of 4, 0.1 s each: running for seconds after the first tiles
    report = drive(
        {
            "INPUT": str(data_dir / "isbi2012" / "train" / "images" / "0.png"),
            "MODEL": "slow",
            "SERVER": server.url,
            "API_KEY": KEY_A,
            "TILE": "16",
            "OUTPUT": str(tmp_path / "out.tif"),
        },
        cancel_at=12,  # past the upload's 10 %: the server has done some tiles
    )
    assert not report["ok"] and any("canceled on the server" in e for e in report["errors"]), report
    (job_id,) = report["jobs"]
    job = wait_for(client, job_id, timeout=30)
    assert job["status"] == "canceled", job
    assert job["progress"]["tiles_done"] < job["progress"]["tiles_total"], job
    assert not (tmp_path / "out.tif").exists()


def test_the_loaded_layers_have_the_cards_colours(drive, server, client, data_dir, tmp_path):
    report = drive(
        {
            "INPUT": str(data_dir / "geotiff" / "RGB.byte.tif"),
            "MODEL": "rgb-test",
            "SERVER": server.url,
            "API_KEY": KEY_A,
            "TILE": "128",
            "OUTPUT": str(tmp_path / "out.tif"),
            "VECTORS": str(tmp_path / "out.geojson"),
        },
        load=True,
    )
    assert report["ok"], report
    card = client.get("/models/rgb-test").json()
    palette = [[c["index"], c["color"], c["name"]] for c in card["classes"]]
    assert report["styles"]["OUTPUT"] == {"renderer": "paletted", "entries": palette}, report
    objects = [entry for entry, c in zip(palette, card["classes"]) if not c.get("background")]
    assert report["styles"]["VECTORS"] == {"renderer": "categorizedSymbol", "entries": objects}, report
    assert json.loads((tmp_path / "out.geojson").read_text())["type"] == "FeatureCollection"


def test_the_objects_layer_and_labels_are_loaded(drive, nuclei_server, data_dir, tmp_path):  # noqa: F811
    """With an instance model: the objects (one polygon each, from the job's vectors) load outlined in the class's
    colour, and the label raster comes down beside them, as the server made them."""
    image = write_nuclei(data_dir, tmp_path / "nuclei.tif")
    report = drive(
        {
            "INPUT": str(image),
            "MODEL": "unet-nuclei",
            "SERVER": nuclei_server.url,
            "API_KEY": KEY_A,
            "TILE": "96",
            "OUTPUT": str(tmp_path / "mask.tif"),
            "OBJECTS": str(tmp_path / "objects.gpkg"),
            "INSTANCES": str(tmp_path / "labels.tif"),
        },
        load=True,
    )
    assert report["ok"], report
    labels, grid = read_labels(tmp_path / "labels.tif")
    assert grid["dtype"] == "uint32" and labels.max() > 20
    with sqlite3.connect(tmp_path / "objects.gpkg") as db:
        (table,) = db.execute("SELECT table_name FROM gpkg_contents WHERE data_type = 'features'").fetchone()
        ids = sorted(row[0] for row in db.execute(f'SELECT "id" FROM "{table}"'))
    assert ids == list(range(1, int(labels.max()) + 1))
    assert report["styles"]["OBJECTS"] == {"renderer": "categorizedSymbol", "entries": [[1, "#ff3030", "nucleus"]]}
    (job_id,) = report["jobs"]
    with nuclei_server.client() as api:
        assert wait_for(api, job_id)["options"]["instances"] is True
