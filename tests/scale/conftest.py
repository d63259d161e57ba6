"""The scale-out on real parts: Redis and PostgreSQL on loopback (``tests/backends.py``), the API in queue
mode and Celery workers, each a process of its own, started with the command lines of the compose file's
services (``SERVE_ARGS``, ``WORKER_ARGS``; ``tests/deploy/test_compose.py`` checks that they agree).

Leases are short here (3 s, a heartbeat every 0.5 s) so that a killed worker's job comes back in seconds;
every process runs one torch thread.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from tests.api.conftest import ChildProcess, Server, inputs_root, server_env, test_architectures, weights  # noqa: F401 (fixtures)
from tests.conftest import REPO
from tests.scale.launch import LAUNCH, SERVE_ARGS, WORKER_ARGS
from tileseg.cli import cli
from tileseg.jobs.store import JobStore

SCALE_SETTINGS = {"mode": "queue", "lease": 3, "heartbeat": 0.5, "reap_interval": 0.5, "requeue_after": 2}
PUBLISHED = "published by attempt"


class WorkerProcess(ChildProcess):
    """``tileseg worker`` in a subprocess; ready once Celery says so in its log."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env = env
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [*LAUNCH, *WORKER_ARGS], cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self, timeout: float = 90) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode}:\n{self.text()[-4000:]}")
            if " ready." in self.text():
                return self
            time.sleep(0.2)
        raise RuntimeError(f"the worker did not get ready in {timeout} s:\n{self.text()[-4000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Cluster:
    """The API in queue mode on Redis and PostgreSQL; workers are started per test."""

    api: Server
    data: Path
    database: str
    redis: object
    env: dict[str, str]
    logs: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    started: int = 0  # workers started so far: each gets a log of its own

    def start_workers(self, count: int = 1, **settings) -> list[WorkerProcess]:
        """Start ``count`` workers at once (``settings`` override TILESEG_* settings) and wait until ready."""
        env = {**self.env, **{f"TILESEG_{k.upper()}": str(v) for k, v in settings.items()}}
        started = [WorkerProcess(env, self.logs / f"worker-{self.started + i}.log").start() for i in range(count)]
        self.started += count
        self.workers.extend(started)
        return [w.wait_ready() for w in started]

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def store(self) -> JobStore:
        return JobStore(self.database)

    def worker_of(self, job_id: str) -> WorkerProcess:
        """The worker process whose attempt holds the job now."""
        with_pid = self.store_read(job_id).worker or ""
        pid = int(with_pid.rsplit(":", 1)[1])
        return next(w for w in self.workers if w.pid == pid)

    def store_read(self, job_id: str):
        store = self.store()
        try:
            return store.get(job_id)
        finally:
            store.close()

    def publications(self, job_id: str) -> int:
        """How many attempts published this job, by every worker's log."""
        return sum(
            line.count(f"job {job_id} {PUBLISHED}")
            for line in (path.read_text(errors="replace") for path in self.logs.glob("worker-*.log"))
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_server, postgres, server_env):  # noqa: F811 (fixture)
    """The API in queue mode, on a fresh database; the workers each test started are stopped after it."""
    data = tmp_path_factory.mktemp("scale-data")
    logs = tmp_path_factory.mktemp("scale-logs")
    database = postgres.create_database("tileseg_scale")
    env = server_env(data, **SCALE_SETTINGS, broker_url=redis_server.url, database_url=database)
    api = Server(data, env, logs / "api.log", command=[*LAUNCH, *SERVE_ARGS]).start()
    group = Cluster(api, data, database, redis_server, env, logs)
    yield group
    group.stop_workers()
    api.stop()


@pytest.fixture
def scale(cluster):
    """The cluster, its workers stopped when the test ends."""
    yield cluster
    cluster.stop_workers()


def wait_running(cluster: Cluster, job_id: str, tiles: int = 1, timeout: float = 90):
    """Wait until the job runs and has done at least ``tiles`` tiles; returns its row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = cluster.store_read(job_id)
        if job.status.value == "running" and job.tiles_done >= tiles:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not run: {cluster.store_read(job_id)}")


def cli_mask(weights: Path, source: Path, out: Path, model: str, **options) -> np.ndarray:  # noqa: F811
    """The mask that ``tileseg segment`` makes of ``source`` with these options."""
    args = [
        "segment",
        str(source),
        str(out),
        "--weights",
        str(weights / f"{model}.safetensors"),
        "--device",
        "cpu",
        "--batch",
        "64",
        "-q",
    ]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as src:
        return src.read()


def mask_of(client, job: dict, path: Path) -> np.ndarray:
    """The mask the API serves for a job."""
    response = client.get(job["links"]["mask"])
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    with rasterio.open(path) as src:
        return src.read()
