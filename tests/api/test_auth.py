"""API keys: without one every route but the health probes answers 401; a key sees only its own jobs."""

from __future__ import annotations

import pytest

from tests.api.conftest import KEY_B, submit, wait_for

JOB = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/jobs"),
        ("GET", f"/jobs/{JOB}"),
        ("GET", f"/jobs/{JOB}/mask"),
        ("DELETE", f"/jobs/{JOB}"),
        ("GET", "/models"),
        ("GET", "/models/rgb-test"),
        ("GET", "/metrics"),
        ("POST", "/segment"),
    ],
)
@pytest.mark.parametrize("key", [None, "wrong-key-0123456789"])
def test_a_key_is_needed(server, method, path, key):
    with server.client(key) as anonymous:
        response = anonymous.request(method, path)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"


def test_health_probes_are_open(server):
    with server.client(None) as anonymous:
        assert anonymous.get("/livez").status_code == 200
        assert anonymous.get("/readyz").json()["status"] == "ready"
        assert anonymous.get("/docs").status_code == 200, "the docs are open too"


def test_a_key_sees_only_its_own_jobs(client, server, data_dir):
    job = submit(client, data_dir / "geotiff" / "rgb-byte-tenth.tif").json()
    assert wait_for(client, job["id"])["status"] == "succeeded"
    with server.client(KEY_B) as other:
        for path in (f"/jobs/{job['id']}", f"/jobs/{job['id']}/mask", f"/jobs/{job['id']}/preview.png"):
            response = other.get(path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
        assert other.delete(f"/jobs/{job['id']}").status_code == 404
        assert job["id"] not in [j["id"] for j in other.get("/jobs", params={"limit": 500}).json()["jobs"]]
        mine = submit(other, data_dir / "geotiff" / "rgb-byte-tenth.tif").json()
        assert other.get(f"/jobs/{mine['id']}").status_code == 200
    assert client.get(f"/jobs/{job['id']}/mask").status_code == 200, "the owner still has it"
    assert client.get(f"/jobs/{mine['id']}").status_code == 404
