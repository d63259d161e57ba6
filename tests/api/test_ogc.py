"""OGC API – Processes at ``/ogc/``, driven by OWSLib's ``Processes`` (a client nobody here wrote) against
the real server: list, describe, execute, and the mask equals the one the same image gets through
``POST /segment``. Refused hrefs, wrong keys, unknown models and processes answer the standard's exception
JSON and make no job; dismissing a running job stops it.
"""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np
import pytest
import rasterio
from owslib.ogcapi.processes import Processes

from tests.api.conftest import KEY_A, submit, wait_for
from tileseg.api.schemas import form_properties

EXCEPTIONS = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0"


def tenth(data_dir):
    return data_dir / "geotiff" / "rgb-byte-tenth.tif"


def mask_of(body: bytes) -> tuple[np.ndarray, object]:
    with rasterio.MemoryFile(body) as mem, mem.open() as src:
        return src.read(), src.transform


def segment_mask(client: httpx.Client, path) -> bytes:
    """The mask of ``path`` through ``POST /segment`` (the reference for every OGC run)."""
    job = submit(client, path).json()
    assert wait_for(client, job["id"])["status"] == "succeeded"
    return client.get(f"/jobs/{job['id']}/mask").content


def poll(client: httpx.Client, url: str, until=("successful", "failed", "dismissed"), timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = client.get(url).json()
        if info["status"] in until:
            return info
        assert time.monotonic() < deadline, f"still {info['status']} after {timeout} s: {info}"
        time.sleep(0.1)


def job_count(client: httpx.Client) -> int:
    return len(client.get("/jobs", params={"limit": 500}).json()["jobs"])


@pytest.fixture
def ogc(server) -> Processes:
    return Processes(f"{server.url}/ogc/", headers={"X-API-Key": KEY_A})


def test_owslib_lists_describes_and_executes_async(ogc, client, data_dir):
    assert [p["id"] for p in ogc.processes()] == ["segment"]
    assert "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core" in ogc.conformance()["conformsTo"]
    process = ogc.process("segment")
    assert "async-execute" in process["jobControlOptions"]
    assert {"rgb-test", "grey-test", "slow"} <= set(process["inputs"]["model"]["schema"]["enum"])
    options = {k: v for k, v in process["inputs"].items() if k not in ("image", "model")}
    assert {k: v["schema"] for k, v in options.items()} == {
        k: {key: value for key, value in p.items() if key != "description"} for k, p in form_properties().items()
    }
    assert set(process["outputs"]) == {"mask", "vectors", "instances", "objects"}

    href = f"file://{tenth(data_dir)}"
    status = ogc.execute("segment", inputs={"image": {"href": href}, "model": "rgb-test"}, async_=True)
    location = ogc.response_headers["Location"]
    assert status["status"] in ("accepted", "running", "successful") and location.endswith(status["jobID"])
    done = poll(client, location)
    assert done["status"] == "successful" and done["progress"] == 100
    results_link = next(link["href"] for link in done["links"] if link["rel"].endswith("/results"))
    results = client.get(results_link).json()
    assert set(results) == {"mask"} and results["mask"]["type"].startswith("image/tiff")
    mask = client.get(results["mask"]["href"])
    assert mask.status_code == 200
    expected, transform = mask_of(segment_mask(client, tenth(data_dir)))
    got, got_transform = mask_of(mask.content)
    assert np.array_equal(got, expected) and got_transform == transform
    listed = client.get("/ogc/jobs").json()["jobs"]
    assert any(j["jobID"] == status["jobID"] and j["status"] == "successful" for j in listed)


def test_sync_execution_with_an_inline_image_and_vectors(ogc, client, data_dir):
    value = base64.b64encode(tenth(data_dir).read_bytes()).decode()
    results = ogc.execute(
        "segment", inputs={"image": {"value": value}, "model": "rgb-test"}, outputs={"mask": {}, "vectors": {}}
    )
    assert set(results) == {"mask", "vectors"}
    got, _ = mask_of(client.get(results["mask"]["href"]).content)
    expected, _ = mask_of(segment_mask(client, tenth(data_dir)))
    assert np.array_equal(got, expected)
    assert client.get(results["vectors"]["href"]).status_code == 200
    raw = client.post(
        "/ogc/processes/segment/execution",
        json={"inputs": {"image": value, "model": "rgb-test"}, "response": "raw"},
        timeout=120,
    )
    assert raw.status_code == 200 and np.array_equal(mask_of(raw.content)[0], expected)


@pytest.mark.parametrize("href", ["file:///etc/passwd", "http://169.254.169.254/latest/meta-data", "../../etc/hosts"])
def test_a_refused_href_is_a_400_and_makes_no_job(client, href):
    before = job_count(client)
    answer = client.post(
        "/ogc/processes/segment/execution", json={"inputs": {"image": {"href": href}, "model": "rgb-test"}}
    )
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["status"] == 400 and body["type"].endswith("source_not_allowed") and "input folders" in body["detail"]
    assert job_count(client) == before


def test_keys_models_processes_and_bad_bodies_answer_ogc_exceptions(server, client, data_dir):
    href = {"href": str(tenth(data_dir))}
    for key in (None, "not-a-key-of-this-server"):
        with server.client(key) as stranger:
            answer = stranger.post("/ogc/processes/segment/execution", json={"inputs": {"image": href}})
            assert answer.status_code == 401 and answer.json()["status"] == 401, answer.text
            assert "X-API-Key" in answer.json()["detail"]
            assert stranger.get("/ogc/processes").status_code == 401
    answer = client.post("/ogc/processes/segment/execution", json={"inputs": {"image": href, "model": "rgb-tset"}})
    assert answer.status_code == 404 and "rgb-tset" in answer.json()["detail"], answer.text
    answer = client.get("/ogc/processes/classify")
    assert answer.status_code == 404 and answer.json()["type"] == f"{EXCEPTIONS}/no-such-process"
    answer = client.get("/ogc/jobs/00000000-0000-0000-0000-000000000000")
    assert answer.status_code == 404 and answer.json()["type"] == f"{EXCEPTIONS}/no-such-job"
    bad = [
        ({"inputs": {"image": href}}, "model"),
        ({"inputs": {"image": href, "model": "rgb-test", "tile": "big"}}, "tile"),
        ({"inputs": {"image": href, "model": "rgb-test", "batch": 4}}, "batch"),
        ({"inputs": {"image": {"value": "not base64!"}, "model": "rgb-test"}}, "base64"),
        ({"inputs": {"image": href, "model": "rgb-test"}, "outputs": {"probabilities": {}}}, "probabilities"),
    ]
    for body, word in bad:
        answer = client.post("/ogc/processes/segment/execution", json=body)
        assert answer.status_code == 400 and word in answer.json()["detail"], (body, answer.text)
    answer = client.post("/ogc/processes/segment/execution", content=b"{", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["title"]


def test_dismiss_stops_a_running_job(client, data_dir):
    image = data_dir / "isbi2012" / "test" / "images" / "0.png"
    answer = client.post(
        "/ogc/processes/segment/execution",
        json={"inputs": {"image": {"href": str(image)}, "model": "slow", "tile": 32}},
        headers={"Prefer": "respond-async"},
    )
    assert answer.status_code == 201 and answer.headers["Preference-Applied"] == "respond-async"
    location = answer.headers["Location"]
    job_id = answer.json()["jobID"]
    wait_for(client, job_id, until=("running",), check=lambda j: j["progress"]["tiles_done"] >= 2)
    early = client.get(f"{location}/results")
    assert early.status_code == 404 and early.json()["type"] == f"{EXCEPTIONS}/result-not-ready"
    dismissed = client.delete(location)
    assert dismissed.status_code == 200, dismissed.text
    final = wait_for(client, job_id, until=("canceled",))
    assert final["progress"]["tiles_done"] < final["progress"]["tiles_total"], "stopped before the end"
    assert poll(client, location)["status"] == "dismissed"
    done = final["progress"]["tiles_done"]
    time.sleep(1)
    assert client.get(f"/jobs/{job_id}").json()["progress"]["tiles_done"] == done, "no tile after the dismissal"
