"""Batches in queue mode on real parts: the API on PostgreSQL and Redis, two Celery workers. A batch's jobs are
spread over the workers, its counts add up, another key sees none of it, the per-key limit holds, DELETE
cancels what has not ended; each job's and the batch's callbacks reach a real receiver, signed."""

from __future__ import annotations

import numpy as np
import pytest

from tests.api.conftest import KEY_B, Server
from tests.api.receiver import SECRET, Receiver
from tests.api.test_batches import wait_batch
from tests.conftest import write_raster
from tests.scale.conftest import SCALE_SETTINGS, Cluster
from tests.scale.launch import LAUNCH, SERVE_ARGS

LIMIT = 6


@pytest.fixture(scope="module")
def receiver():
    hooks = Receiver()
    yield hooks
    hooks.close()


@pytest.fixture(scope="module")
def batch_cluster(tmp_path_factory, redis_server, postgres, server_env, receiver):
    data = tmp_path_factory.mktemp("batch-scale-data")
    logs = tmp_path_factory.mktemp("batch-scale-logs")
    database = postgres.create_database("tileseg_batches")
    settings = dict(**SCALE_SETTINGS, batch_max_jobs=LIMIT, callback_allow=receiver.allow, callback_secret=SECRET)
    env = server_env(data, **settings, broker_url=redis_server.url, database_url=database)
    api = Server(data, env, logs / "api.log", command=[*LAUNCH, *SERVE_ARGS]).start()
    group = Cluster(api, data, database, redis_server, env, logs)
    group.start_workers(2)
    yield group
    group.stop_workers()
    api.stop()


@pytest.fixture(scope="module")
def sources(inputs_root) -> list[str]:
    rng = np.random.default_rng(3)
    return [
        str(write_raster(inputs_root / f"queue-{i}.tif", rng.integers(0, 256, (1, 128, 128), np.uint8)))
        for i in range(4)
    ]


def test_a_batch_is_spread_over_the_workers_and_calls_back(batch_cluster, sources, receiver):
    with batch_cluster.api.client() as client, batch_cluster.api.client(KEY_B) as other:
        answer = client.post(
            "/batches",
            json={"model": "slow", "sources": sources, "tile": 32, "callback": receiver.url("/hooks/queue")},
        )
        assert answer.status_code == 202, answer.text
        created = answer.json()
        batch = wait_batch(client, created["id"])
        assert batch["status"] == "succeeded" and batch["counts"]["succeeded"] == 4 == sum(batch["counts"].values())
        workers = {batch_cluster.store_read(job_id).worker for job_id in created["job_ids"]}
        assert len(workers) == 2, workers  # both workers took some of its jobs
        assert other.get(f"/batches/{created['id']}").status_code == 404
        assert all(other.get(f"/jobs/{j}").status_code == 404 for j in created["job_ids"])
        got = receiver.wait(5)
    assert all(d.signed for d in got)
    assert sorted(d.json["event"] for d in got) == ["finished"] + ["succeeded"] * 4
    finished = next(d.json for d in got if d.json["event"] == "finished")
    assert finished["id"] == created["id"] and finished["counts"]["succeeded"] == 4


def test_the_limit_and_delete_in_queue_mode(batch_cluster, sources):
    with batch_cluster.api.client() as client:
        answer = client.post("/batches", json={"model": "slow", "sources": sources + sources[:2], "tile": 8})
        assert answer.status_code == 202, answer.text
        busy = client.post("/batches", json={"model": "slow", "sources": sources[:1]})
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_jobs", busy.text
        assert client.delete(f"/batches/{answer.json()['id']}").status_code == 204
        batch = wait_batch(client, answer.json()["id"])
        assert batch["status"] == "canceled" and batch["counts"]["canceled"] >= 4, batch
        assert sum(batch["counts"].values()) == 6 and batch["counts"]["queued"] == batch["counts"]["running"] == 0
