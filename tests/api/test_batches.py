"""``POST /batches`` on a real embedded server: every source checked before any job exists, the jobs ordinary
jobs of the caller's key, counted and paged at ``GET /batches/{id}``, canceled together, and the per-key limit
of jobs queued or running (413 for a batch larger than it, 429 while the key's jobs would pass it)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.api.conftest import KEY_B, Server, wait_for
from tests.conftest import write_raster
from tileseg.jobs.files import jobs_root

LIMIT = 4
METADATA = "http://169.254.169.254/latest"  # a cloud's metadata service: never read
HOOK = "http://127.0.0.1:9/hooks/x"  # a callback on a server with no TILESEG_CALLBACK_ALLOW


@pytest.fixture(scope="module")
def sources(inputs_root) -> list[str]:
    """Three small RGB rasters under the server's input root, and one larger grey one for the slow model."""
    rng = np.random.default_rng(7)
    paths = [
        write_raster(inputs_root / f"batch-{i}.tif", rng.integers(0, 256, (3, 64, 96), np.uint8)) for i in range(3)
    ]
    write_raster(inputs_root / "batch-slow.tif", rng.integers(0, 256, (1, 256, 256), np.uint8))
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory, server_env):
    data = tmp_path_factory.mktemp("batch-data")
    srv = Server(data, server_env(data, batch_max_jobs=LIMIT), data.parent / "batch-server.log").start()
    yield srv
    srv.stop()


def job_folders(server: Server) -> set[str]:
    root = jobs_root(server.data_dir)
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def wait_batch(client, batch_id: str, until=("succeeded", "failed", "canceled"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.get(f"/batches/{batch_id}").json()
        if batch["status"] in until:
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)


def test_a_batch_runs_each_source_as_a_job_of_the_key(batch_server, sources):
    with batch_server.client() as client, batch_server.client(KEY_B) as other:
        answer = client.post("/batches", json={"model": "rgb-test", "sources": sources, "tile": 32})
        assert answer.status_code == 202, answer.text
        created = answer.json()
        assert answer.headers["location"] == f"/batches/{created['id']}" and created["size"] == 3
        ids = created["job_ids"]
        assert len(set(ids)) == 3
        batch = wait_batch(client, created["id"])
        assert batch["status"] == "succeeded", batch
        assert batch["counts"]["succeeded"] == 3 and sum(batch["counts"].values()) == batch["size"] == 3
        assert [job["id"] for job in batch["jobs"]] == ids  # in the order of the sources
        assert [job["input"]["name"] for job in batch["jobs"]] == ["batch-0.tif", "batch-1.tif", "batch-2.tif"]
        assert batch["options"]["tile"] == 32 and all(job["options"]["tile"] == 32 for job in batch["jobs"])
        for job_id in ids:  # ordinary jobs of key A: its results, another key's 404
            assert client.get(f"/jobs/{job_id}/mask").status_code == 200
            assert other.get(f"/jobs/{job_id}").status_code == 404
        assert {j["id"] for j in client.get("/jobs?limit=500").json()["jobs"]} >= set(ids)
        hidden = other.get(f"/batches/{created['id']}")
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "batch_not_found"
        assert other.delete(f"/batches/{created['id']}").status_code == 404
        first = client.get(f"/batches/{created['id']}?limit=2").json()
        assert [j["id"] for j in first["jobs"]] == ids[:2] and first["links"]["prev"] is None
        second = client.get(first["links"]["next"]).json()
        assert [j["id"] for j in second["jobs"]] == ids[2:] and second["links"]["next"] is None
        assert second["links"]["prev"].endswith("offset=0")


@pytest.mark.parametrize(
    "body,code,words",
    [
        ({"model": "rgb-test", "sources": ["SRC0", "/etc/hostname", "SRC1"]}, "source_not_allowed", "sources[1]"),
        ({"model": "rgb-test", "sources": ["SRC0", f"{METADATA}/x.tif"]}, "source_not_allowed", "sources[1]"),
        ({"model": "rgb-test", "sources": ["SRC0", "SRC1"], "tile": "big"}, "bad_request", "tile"),
        ({"model": "rgb-test", "sources": ["SRC0"], "stac_search": {"url": "http://x/"}}, "bad_request", "exactly one"),
        ({"model": "rgb-test", "sources": ["SRC0"], "readers": 3}, "bad_request", "readers"),
        ({"model": "rgb-test", "sources": []}, "bad_request", "sources"),
        ({"model": "rgb-test", "sources": ["SRC0"], "callback": HOOK}, "callback_not_allowed", "CALLBACK_ALLOW"),
        ({"model": "no-such", "sources": ["SRC0"]}, "model_not_found", "no-such"),
        ({"model": "rgb-test", "stac_search": {"url": "http://127.0.0.1:9/"}}, "source_not_allowed", "stac_search.url"),
    ],
)  # fmt: skip
def test_a_bad_batch_is_refused_whole_and_nothing_is_made(batch_server, sources, body, code, words):
    body = {**body}
    if "sources" in body:
        body["sources"] = [sources[int(s[3:])] if s.startswith("SRC") else s for s in body["sources"]]
    with batch_server.client() as client:
        before_jobs, before_folders = client.get("/jobs?limit=500").json()["jobs"], job_folders(batch_server)
        answer = client.post("/batches", json=body)
        assert answer.status_code in (400, 404), answer.text
        error = answer.json()["error"]
        assert error["code"] == code and words in error["message"], error
        assert client.get("/jobs?limit=500").json()["jobs"] == before_jobs
        assert job_folders(batch_server) == before_folders


def test_the_per_key_limit_and_delete_cancels_the_batch(batch_server, sources, inputs_root):
    slow = str(inputs_root / "batch-slow.tif")
    with batch_server.client() as client, batch_server.client(KEY_B) as other:
        too_large = client.post("/batches", json={"model": "rgb-test", "sources": sources + sources[:2]})
        assert too_large.status_code == 413, too_large.text
        assert too_large.json()["error"]["code"] == "batch_too_large"
        assert f"{LIMIT} (TILESEG_BATCH_MAX_JOBS)" in too_large.json()["error"]["message"]
        # three slow jobs (64 forward passes of 0.1 s each): queued or running for seconds
        answer = client.post("/batches", json={"model": "slow", "sources": [slow] * 3, "tile": 16})
        assert answer.status_code == 202, answer.text
        batch_id, ids = answer.json()["id"], answer.json()["job_ids"]
        busy = client.post("/batches", json={"model": "rgb-test", "sources": sources[:2]})
        assert busy.status_code == 429, busy.text
        assert busy.json()["error"]["code"] == "too_many_jobs" and busy.headers["retry-after"] == "30"
        assert f"limit of {LIMIT} (TILESEG_BATCH_MAX_JOBS)" in busy.json()["error"]["message"]
        single = client.post("/batches", json={"model": "rgb-test", "sources": sources[:1]})
        assert single.status_code == 202, single.text  # 3 + 1 is the limit itself
        assert other.post("/batches", json={"model": "rgb-test", "sources": sources}).status_code == 202  # per key
        assert client.delete(f"/batches/{batch_id}").status_code == 204
        batch = wait_batch(client, batch_id)
        assert batch["status"] == "canceled" and batch["counts"]["canceled"] == 3, batch
        for job_id in ids:
            assert wait_for(client, job_id)["status"] == "canceled"
        wait_batch(client, single.json()["id"])
        after = client.post("/batches", json={"model": "rgb-test", "sources": sources[:2]})
        assert after.status_code == 202, after.text  # the canceled jobs no longer count
        assert wait_batch(client, after.json()["id"])["status"] == "succeeded"


def test_a_stac_search_batch_takes_the_items_assets(tmp_path, start_server, sources):
    """A real STAC API on loopback (rustac, as the command line's tests use): the items a search finds become the
    batch's jobs, their assets read as any source (here paths under the input root)."""
    from pathlib import Path

    from tests.cohorts.conftest import COLLECTION, StacApi, stac_item

    items = [stac_item(f"em{i}", Path(sources[i]), f"2024-0{i + 1}-15", float(i)) for i in range(3)]
    (tmp_path / "stac").mkdir()
    api = StacApi(tmp_path / "stac", COLLECTION, items).start()
    try:
        server = start_server(source_allow=f"{api.url}/", batch_max_jobs=LIMIT)
        search = {"url": api.url, "collections": ["em-scenes"], "datetime": "2024-01-01T00:00:00Z/2024-02-28T00:00:00Z"}
        with server.client() as client:
            answer = client.post("/batches", json={"model": "rgb-test", "stac_search": search, "asset": "visual"})
            assert answer.status_code == 202, answer.text
            batch = wait_batch(client, answer.json()["id"])
            assert batch["status"] == "succeeded" and batch["size"] == 2, batch
            assert sorted(j["input"]["name"] for j in batch["jobs"]) == ["batch-0.tif", "batch-1.tif"]
            unknown = client.post(
                "/batches", json={"model": "rgb-test", "stac_search": {**search, "collections": ["x"]}}
            )
            assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_collection", unknown.text
            none = client.post(
                "/batches", json={"model": "rgb-test", "stac_search": {**search, "datetime": "2030-01-01T00:00:00Z"}}
            )
            assert none.status_code == 400 and none.json()["error"]["code"] == "no_inputs", none.text
    finally:
        api.stop()
