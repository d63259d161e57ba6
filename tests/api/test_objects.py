"""Objects (``instances=true``) through the real server running its jobs itself, with the shipped ``unet-nuclei``
on a real nuclei image: the label GeoTIFF equals a single local ``segment()`` run's, on the mask's grid; the job
links and counts them; its table and its vectors are one row and one feature per object; OGC API - Processes
lists and returns them; ``tileseg segment --server --instances --objects`` fetches them; and a model without
an instance decoding is refused with a 400 naming the one that has one, before any job exists; with results in
S3 they are staged and served from the store.
(In queue mode, in three shards: ``tests/scale/test_objects.py``.)"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.api.conftest import KEY_A, Server, submit, wait_for
from tests.api.objects import (  # noqa: F401 (fixtures)
    EXACT,
    grid_of,
    nuclei_server,
    nuclei_weights,
    read_labels,
    reference_labels,
    write_nuclei,
)
from tileseg.cli import cli
from tileseg.client import Client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nuclei(data_dir, inputs_root):
    """The image, under the server's input roots (OGC's href reads it there)."""
    return write_nuclei(data_dir, inputs_root / "nuclei.tif")


@pytest.fixture(scope="module")
def reference(nuclei, tmp_path_factory):
    return reference_labels(nuclei, tmp_path_factory.mktemp("objects-reference"))


@pytest.fixture
def api(nuclei_server):  # noqa: F811 (fixture)
    with nuclei_server.client() as c:
        yield c


def fetch_labels(api, url: str, path) -> tuple[np.ndarray, dict]:
    response = api.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/tiff"
    path.write_bytes(response.content)
    return read_labels(path)


def test_a_job_writes_links_and_counts_the_objects(api, nuclei, reference, tmp_path):
    labels, grid = reference
    response = submit(api, nuclei, model="unet-nuclei", instances=True, vectors=True, **EXACT)
    assert response.status_code == 202, response.text
    job = wait_for(api, response.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    url = f"/jobs/{job['id']}"
    assert job["options"]["instances"] is True
    assert job["links"]["instances"] == f"{url}/instances" and job["links"]["objects"] == f"{url}/objects"
    assert job["result"]["objects"] == {"nucleus": int(labels.max())}

    served, served_grid = fetch_labels(api, job["links"]["instances"], tmp_path / "instances.tif")
    assert served_grid["dtype"] == "uint32" and served_grid["count"] == 1
    np.testing.assert_array_equal(served, labels)
    mask = tmp_path / "mask.tif"
    mask.write_bytes(api.get(job["links"]["mask"]).content)
    assert {k: served_grid[k] for k in ("shape", "crs", "transform")} == grid_of(mask)
    ranged = api.get(job["links"]["instances"], headers={"Range": "bytes=0-3"})
    assert ranged.status_code == 206 and ranged.content in (b"II*\x00", b"MM\x00*")

    table = api.get(job["links"]["objects"])
    assert table.status_code == 200 and table.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert sorted(int(r["id"]) for r in rows) == list(range(1, int(labels.max()) + 1))
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    assert {int(r["id"]): int(r["pixels"]) for r in rows} == dict(zip(ids.tolist(), counts.tolist()))

    # an instance model's vectors are its objects: QuPath detections in pixel space, one per label
    features = json.loads(api.get(job["links"]["vectors"], params={"format": "geojson"}).content)["features"]
    assert sorted(f["properties"]["id"] for f in features) == list(range(1, int(labels.max()) + 1))
    assert all(f["properties"]["objectType"] == "detection" for f in features)
    assert {"area", "perimeter", "probability", "band_1"} <= set(features[0]["properties"]["measurements"])


def test_a_job_without_objects_has_none(api, nuclei):
    job = wait_for(api, submit(api, nuclei, model="unet-nuclei", **EXACT).json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    assert job["links"]["instances"] is None and job["links"]["objects"] is None
    assert job["result"].get("objects") is None
    for route in ("instances", "objects"):
        answer = api.get(f"/jobs/{job['id']}/{route}")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "no_such_result"
        assert "instances=true" in answer.json()["error"]["message"]


def test_a_model_without_objects_is_refused_before_any_job(api, nuclei):
    before = api.get("/jobs", params={"limit": 500}).json()["jobs"]
    refused = submit(api, nuclei, model="unet-em", instances=True)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "no_instance_output"
    assert "unet-em has no instance output" in error["message"] and "unet-nuclei" in error["message"]
    batch = api.post("/batches", json={"model": "unet-em", "instances": True, "sources": ["nuclei.tif"]})
    assert batch.status_code == 400 and batch.json()["error"]["code"] == "no_instance_output", batch.text
    execute = api.post(
        "/ogc/processes/segment/execution",
        json={"inputs": {"image": {"href": "nuclei.tif"}, "model": "unet-em"}, "outputs": {"instances": {}}},
        headers={"Prefer": "respond-async"},
    )
    assert execute.status_code == 400 and execute.json()["type"].endswith("no_instance_output"), execute.text
    assert api.get("/jobs", params={"limit": 500}).json()["jobs"] == before


def test_ogc_lists_and_returns_the_objects(api, nuclei, reference, tmp_path):
    process = api.get("/ogc/processes/segment").json()
    assert {"instances", "objects"} <= set(process["outputs"]) and "instances" in process["inputs"]
    body = {
        "inputs": {"image": {"href": str(nuclei)}, "model": "unet-nuclei", **EXACT},
        "outputs": {"mask": {}, "instances": {}},
    }
    started = api.post("/ogc/processes/segment/execution", json=body, headers={"Prefer": "respond-async"})
    assert started.status_code == 201, started.text
    job = wait_for(api, started.json()["jobID"], timeout=300)
    assert job["status"] == "succeeded" and job["options"]["instances"] is True, job
    results = api.get(f"/ogc/jobs/{job['id']}/results").json()
    assert set(results) == {"mask", "instances", "objects"}
    assert results["objects"]["type"] == "text/csv"
    served, _ = fetch_labels(api, results["instances"]["href"], tmp_path / "ogc.tif")
    np.testing.assert_array_equal(served, reference[0])


def test_objects_in_the_s3_results_store(s3_server, server_env, nuclei_weights, nuclei, reference, tmp_path):  # noqa: F811
    bucket = s3_server.bucket()
    settings = {"weights_dir": nuclei_weights, "results_url": f"s3://{bucket}/tileseg/"}
    env = {**server_env(tmp_path / "data", **settings), **s3_server.env}
    srv = Server(tmp_path / "data", env, tmp_path / "s3-objects.log").start()
    try:
        with srv.client() as remote:
            job = wait_for(remote, submit(remote, nuclei, model="unet-nuclei", instances=True, **EXACT).json()["id"])
            assert job["status"] == "succeeded", (job, srv.log_tail())
            names = {key.rsplit("/", 1)[1] for key in s3_server.keys(bucket, f"tileseg/jobs/{job['id']}/")}
            assert {"mask.tif", "instances.tif", "objects.csv"} <= names, names
            served, _ = fetch_labels(remote, job["links"]["instances"], tmp_path / "s3.tif")
            np.testing.assert_array_equal(served, reference[0])
            part = remote.get(job["links"]["instances"], headers={"Range": "bytes=0-99"})
            assert part.status_code == 206 and len(part.content) == 100
            rows = list(csv.DictReader(io.StringIO(remote.get(job["links"]["objects"]).text)))
            assert len(rows) == reference[0].max()
    finally:
        srv.stop()


def test_the_command_line_fetches_the_objects_from_a_server(nuclei_server, nuclei, reference, tmp_path):  # noqa: F811
    labels, _ = reference
    args = ["segment", str(nuclei), str(tmp_path / "mask.tif"), "--model", "unet-nuclei", "--server"]
    args += [nuclei_server.url, "--api-key", KEY_A, "--tile", "96", "--precision", "fp32", "--runtime", "torch"]
    args += ["--instances", str(tmp_path / "labels.tif"), "--objects", str(tmp_path / "objects.csv")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"objects: {int(labels.max())} nucleus" in result.output
    np.testing.assert_array_equal(read_labels(tmp_path / "labels.tif")[0], labels)
    with open(tmp_path / "objects.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == labels.max()
    with Client(nuclei_server.url, api_key=KEY_A) as client:
        job = client.jobs(limit=1)[0]
        assert job["result"]["objects"] == {"nucleus": int(labels.max())}
        client.download(job, "objects", tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "objects.csv").read_bytes()


def test_the_command_line_writes_the_objects_here(nuclei_weights, nuclei, reference, tmp_path):  # noqa: F811
    import torch

    threads = torch.get_num_threads()
    args = ["segment", str(nuclei), str(tmp_path / "mask.tif"), "--model", "unet-nuclei", "--batch", "4"]
    args += ["--tile", "96", "--precision", "fp32", "--runtime", "torch", "--instances", str(tmp_path / "l.tif")]
    try:
        result = CliRunner(env={"TILESEG_WEIGHTS_DIR": str(nuclei_weights), "TILESEG_TORCH_THREADS": "1"}).invoke(
            cli, args
        )
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_labels(tmp_path / "l.tif")[0], reference[0])
    refused = CliRunner(env={"TILESEG_WEIGHTS_DIR": str(nuclei_weights)}).invoke(
        cli, ["segment", str(nuclei), str(tmp_path / "m.tif"), "--model", "unet-em", "--instances", "x.tif"]
    )
    assert refused.exit_code == 1 and "unet-em has no instance output" in refused.output
    assert "unet-nuclei" in refused.output and not (tmp_path / "m.tif").exists()
