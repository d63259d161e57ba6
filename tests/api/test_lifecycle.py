"""A job's life beyond the happy path: cancel, a server killed under a running job, SIGTERM with and
past its grace period, results that expire.

The ``slow`` model sleeps 0.1 s a batch, so a job on the 512 x 512 ISBI image runs for as long as the tile
size makes it (tile 32: 64 batches, about 7 s), without using the CPU.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import rasterio

from tests.api.conftest import submit, wait_for
from tileseg import models
from tileseg.engine import SegmentOptions, segment
from tileseg.jobs.store import JobStatus, JobStore


def isbi(data_dir: Path) -> Path:
    return data_dir / "isbi2012" / "test" / "images" / "0.png"


def running(client, job_id: str, tiles: int = 1) -> dict:
    return wait_for(client, job_id, until=("running",), check=lambda j: j["progress"]["tiles_done"] >= tiles)


def store_of(data: Path) -> JobStore:
    return JobStore(f"sqlite:///{data / 'jobs.db'}")


def test_cancel_running_and_queued_jobs(client, server, data_dir):
    first = submit(client, isbi(data_dir), model="slow", tile=32).json()
    second = submit(client, isbi(data_dir), model="slow", tile=32).json()
    running(client, first["id"])
    not_ready = client.get(f"/jobs/{first['id']}/mask")
    assert not_ready.status_code == 409 and not_ready.json()["error"]["code"] == "not_ready"

    # the queued one first: canceled the other way round, the worker could claim it between the two calls
    assert client.delete(f"/jobs/{second['id']}").status_code == 204
    assert client.delete(f"/jobs/{first['id']}").status_code == 204
    for job_id in (first["id"], second["id"]):
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "canceled", job
        gone = client.get(f"/jobs/{job_id}/mask")
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "canceled"
    assert client.get(f"/jobs/{second['id']}").json()["attempts"] == 0, "the queued job never ran"
    folder = server.data_dir / "jobs" / first["id"]
    deadline = time.monotonic() + 30
    while folder.exists() and time.monotonic() < deadline:  # the worker removes it at its next batch
        time.sleep(0.1)
    assert not folder.exists() and not (server.data_dir / "jobs" / second["id"]).exists()
    progress = client.get(f"/jobs/{first['id']}").json()["progress"]["tiles_done"]
    time.sleep(0.5)
    assert client.get(f"/jobs/{first['id']}").json()["progress"]["tiles_done"] == progress, "the worker stopped"


def test_deleting_a_finished_job_removes_its_results(client, data_dir):
    job = submit(client, data_dir / "geotiff" / "rgb-byte-tenth.tif").json()
    assert wait_for(client, job["id"])["status"] == "succeeded"
    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "expired"
    assert client.get(f"/jobs/{job['id']}/mask").status_code == 410


def test_sigkill_while_running_then_restart(start_server, weights, data_dir, tmp_path):
    server = start_server()
    with server.client() as client:
        job = submit(client, isbi(data_dir), model="slow", tile=32).json()
        behind = submit(client, data_dir / "geotiff" / "rgb-byte-tenth.tif").json()
        running(client, job["id"], tiles=8)
    server.signal(signal.SIGKILL)
    server.wait(30)

    again = start_server(server.data_dir)
    with again.client() as client:
        done = wait_for(client, job["id"], timeout=180)
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        assert wait_for(client, behind["id"])["status"] == "succeeded"
        (tmp_path / "served.tif").write_bytes(client.get(done["links"]["mask"]).content)
    model = models.load(weights / "slow.safetensors")
    model.delay = 0
    expected = segment(model, isbi(data_dir), tmp_path / "expected.tif", SegmentOptions(tile=32)).output
    with rasterio.open(tmp_path / "served.tif") as got, rasterio.open(expected) as want:
        np.testing.assert_array_equal(got.read(), want.read())


def test_sigterm_lets_the_running_job_finish(start_server, data_dir):
    server = start_server(shutdown_grace=60)
    with server.client() as client:
        job = submit(client, isbi(data_dir), model="slow", tile=64).json()
        queued = submit(client, isbi(data_dir), model="slow", tile=64).json()
        running(client, job["id"])
    server.signal(signal.SIGTERM)
    assert server.wait(90) == -signal.SIGTERM, server.log_tail()  # uvicorn re-raises it after shutting down
    store = store_of(server.data_dir)
    assert store.get(job["id"]).status is JobStatus.SUCCEEDED
    assert (server.data_dir / "jobs" / job["id"] / "mask.tif").is_file()
    assert store.get(queued["id"]).status is JobStatus.QUEUED, "no job is taken after SIGTERM"
    store.close()


def test_sigterm_past_the_grace_period_puts_the_job_back(start_server, data_dir):
    server = start_server(shutdown_grace=0.5)
    with server.client() as client:
        job = submit(client, isbi(data_dir), model="slow", tile=16).json()  # 256 batches: about 30 s
        running(client, job["id"])
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(60) == -signal.SIGTERM, server.log_tail()
    assert time.monotonic() - started < 20
    store = store_of(server.data_dir)
    back = store.get(job["id"])
    assert back.status is JobStatus.QUEUED and back.attempts == 0 and back.token is None
    assert Path(back.input_path).is_file(), "the upload stays for the next run"
    assert not (server.data_dir / "jobs" / job["id"] / "mask.tif").exists()
    store.close()


def test_results_expire(start_server, data_dir):
    server = start_server(result_ttl=1, sweep_interval=0.2)
    with server.client() as client:
        job = submit(client, data_dir / "geotiff" / "rgb-byte-tenth.tif").json()
        wait_for(client, job["id"], until=("succeeded", "expired"))
        expired = wait_for(client, job["id"], until=("expired",), timeout=30)
        assert expired["error"] is None
        for link in (expired["links"]["mask"], expired["links"]["preview"]):
            response = client.get(link)
            assert response.status_code == 410 and response.json()["error"]["code"] == "expired"
    assert not (server.data_dir / "jobs" / job["id"]).exists()
