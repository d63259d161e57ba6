"""Remote ``source`` URLs in queue mode: the API on Redis and PostgreSQL, two ``tileseg worker`` processes.
A flaky server (503 to one request in five) read whole and in two shards, an S3-compatible store named by
``AWS_ENDPOINT_URL``, a server without Range (fetched whole into the job's storage at submission) give the
upload's mask; a server that stops answering fails its job, on a worker, in bounded time."""

from __future__ import annotations

import numpy as np
import pytest

from tests.api.conftest import Server, submit, wait_for
from tests.engine.test_remote import RangeServer, write_cog
from tests.scale.conftest import SCALE_SETTINGS, WorkerProcess, mask_of
from tests.scale.launch import LAUNCH, SERVE_ARGS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    root = tmp_path_factory.mktemp("queue-remote")
    (root / "cogs").mkdir()
    write_cog(root / "cogs" / "scene.tif", 512, seed=7)
    servers = {
        "flaky": RangeServer(root, fail_every=5),
        "plain": RangeServer(root, ranges=False),
        "stalled": RangeServer(root, stall_from=20000),
    }
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture(scope="module")
def queue(hosts, tmp_path_factory, redis_server, postgres, server_env, s3_server):
    bucket = s3_server.bucket()
    s3_server.client().upload_file(str(hosts["flaky"].root / "cogs" / "scene.tif"), bucket, "public/scene.tif")
    logs = tmp_path_factory.mktemp("queue-remote-logs")
    data = tmp_path_factory.mktemp("queue-remote-data")
    allow = ",".join([*(f"{s.url}/cogs/" for s in hosts.values()), f"s3://{bucket}/public/"])
    settings = {
        **SCALE_SETTINGS,
        "broker_url": redis_server.url,
        "database_url": postgres.create_database("tileseg_queue_remote"),
        "source_allow": allow,
        "http_read_timeout": 1,
        "http_max_retry": 3,  # the flaky server fails every fifth request of all: two shards reading at once can
        # meet it again on a retry, which one retry did not survive (a job failed once in a full run)
        "http_retry_delay": 0.05,
    }
    env = {**server_env(data, **settings), **s3_server.env}
    api = Server(data, env, logs / "api.log", command=[*LAUNCH, *SERVE_ARGS]).start()
    workers = [WorkerProcess(env, logs / f"worker-{i}.log").start() for i in range(2)]
    for worker in workers:
        worker.wait_ready()
    yield api, bucket
    for worker in workers:
        worker.stop()
    api.stop()


def test_queue_workers_read_every_source_as_the_upload(queue, hosts, tmp_path):
    api, bucket = queue
    flaky, plain = hosts["flaky"], hosts["plain"]
    with api.client() as client:
        upload = wait_for(client, submit(client, flaky.root / "cogs" / "scene.tif").json()["id"], timeout=120)
        expected = mask_of(client, upload, tmp_path / "upload.tif")
        cases = {
            "flaky": {"source": f"{flaky.url}/cogs/scene.tif"},
            "flaky in shards": {"source": f"{flaky.url}/cogs/scene.tif", "shards": 2, "tile": 64},
            "s3 with its own endpoint": {"source": f"s3://{bucket}/public/scene.tif"},
            "no range": {"source": f"{plain.url}/cogs/scene.tif"},
        }
        for name, fields in cases.items():
            answer = submit(client, **fields)
            assert answer.status_code == 202, (name, answer.text)
            job = wait_for(client, answer.json()["id"], timeout=120)
            assert job["status"] == "succeeded", (name, job)
            np.testing.assert_array_equal(mask_of(client, job, tmp_path / "served.tif"), expected, name)
            if "shards" in fields:
                assert job["shards"] and job["shards"]["total"] == 2, job
        answer = submit(client, source=f"{hosts['stalled'].url}/cogs/scene.tif")
        job = wait_for(client, answer.json()["id"], timeout=90)
        assert job["status"] == "failed" and job["error"]["code"] == "source_unavailable", job
        assert "stopped answering" in job["error"]["message"]
    assert flaky.failures >= 1 and hosts["stalled"].stalls >= 1
