"""The compose file run for real, by Debian's docker-compose through podman's socket: the CPU set-up in
embedded mode (jobs by upload and by ``source`` through the published port, masks equal to the CLI's;
``down`` and ``up`` again keep the job table and the results in the volume), and the ``scale`` profile with
Redis and PostgreSQL images made from Debian's packages and two worker containers (4 jobs succeed; a worker
container killed mid-job: its job completes on the other)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio

from tests.backends import free_port
from tests.conftest import REPO
from tests.deploy.containers import PREFIX, TAG, compose, job_json, podman, ready, timed, wait_until
from tests.deploy.test_image import EXACT, HEALTHCHECK_START_PERIOD, LONG, cli_mask, wait_for_job

pytestmark = pytest.mark.slow

# what a user adds in an override file of their own: a folder of inputs for `source`, faster leases
OVERRIDE = """
services:
  api:
    volumes: ["{shared_input}"]
    environment: {{TILESEG_INPUT_ROOTS: /input, TILESEG_MODELS: unet-em, TILESEG_LEASE: "6", TILESEG_HEARTBEAT: "2",
                  TILESEG_REAP_INTERVAL: "2"}}
  worker-gpu0: &worker
    restart: "no"  # the killed one stays dead: the other must finish its job
    volumes: ["{shared_input}"]
    environment: {{TILESEG_MODELS: unet-em, TILESEG_LEASE: "6", TILESEG_HEARTBEAT: "2", TILESEG_REAP_INTERVAL: "2",
                  TILESEG_TORCH_THREADS: "1"}}
  worker-gpu1: *worker
"""


def stack_env(port: int, **more: str) -> dict[str, str]:
    """The shell of ``docker-compose``: podman's socket, the CI image, a free port, nothing of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TILESEG_", "COMPOSE_", "POSTGRES_"))}
    env.update(TILESEG_TAG=TAG, TILESEG_PORT=str(port), **more)
    return env


def submit(client: httpx.Client, **fields: str) -> dict:
    """``POST /segment`` of a ``source`` (text parts only), with :data:`EXACT`; the job."""
    data = {"model": "unet-em", **EXACT, **fields}
    return job_json(client.post("/segment", files=[(k, (None, v)) for k, v in data.items()]))


def upload(client: httpx.Client, path: Path) -> dict:
    with open(path, "rb") as fh:
        return job_json(client.post("/segment", data={"model": "unet-em", **EXACT}, files={"file": fh}))


@pytest.fixture
def override(tmp_path, shared_input) -> Path:
    path = tmp_path / "docker-compose.override.yml"
    path.write_text(OVERRIDE.format(shared_input=shared_input))
    return path


def test_the_cpu_setup_serves_and_keeps_its_volume_across_down_and_up(image, docker_host, override, data_dir, tmp_path):
    project, port = f"{PREFIX}embedded", free_port()
    env = stack_env(port, DOCKER_HOST=docker_host)
    files = [REPO / "docker-compose.yml", override]
    url = f"http://127.0.0.1:{port}"
    try:
        with timed("compose (CPU): up -d to /readyz 200"):
            compose(project, "up", "-d", env=env, files=files)
            wait_until(ready(url), HEALTHCHECK_START_PERIOD, "the api of the CPU set-up ready")
        with httpx.Client(base_url=url, timeout=60) as client, timed("compose (CPU): a job by upload, one by source"):
            inputs = [data_dir / "isbi2012" / "test" / "images" / f"{i}.png" for i in (2, 3)]
            jobs = [upload(client, inputs[0]), submit(client, source="/input/isbi2012/test/images/3.png")]
            masks = {}
            for job, path in zip(jobs, inputs):
                done = wait_for_job(client, job["id"], ("succeeded", "failed"), 300)
                assert done["status"] == "succeeded", done
                masks[job["id"]] = client.get(done["links"]["mask"]).content
                (tmp_path / "served.tif").write_bytes(masks[job["id"]])
                with rasterio.open(tmp_path / "served.tif") as served:
                    np.testing.assert_array_equal(served.read(), cli_mask(path, tmp_path / "cli.tif", "unet-em"))
        with timed("compose (CPU): down, up -d, ready"):
            compose(project, "down", "-t", "10", env=env, files=files)
            assert not podman("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").split()
            compose(project, "up", "-d", env=env, files=files)
            wait_until(ready(url), HEALTHCHECK_START_PERIOD, "the api ready again")
        with httpx.Client(base_url=url, timeout=60) as client:
            for job_id, mask in masks.items():
                assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
                assert client.get(f"/jobs/{job_id}/mask").content == mask, "the result survived down and up"
    finally:
        compose(project, "down", "-v", "-t", "3", env=env, files=files)


def test_the_scale_profile_runs_jobs_on_two_workers_and_survives_a_killed_one(
    image, backing_images, docker_host, override
):
    project, port = f"{PREFIX}scale", free_port()
    env = stack_env(
        port,
        DOCKER_HOST=docker_host,
        TILESEG_REDIS_PORT=str(free_port()),
        TILESEG_POSTGRES_PORT=str(free_port()),
        **backing_images,
    )
    files = [REPO / "docker-compose.yml", override]
    options = ["--env-file", str(REPO / "scale.env"), "--profile", "scale"]
    url = f"http://127.0.0.1:{port}"
    try:
        with timed("compose (scale): up -d to /readyz 200"):
            compose(project, *options, "up", "-d", env=env, files=files)
            wait_until(ready(url), HEALTHCHECK_START_PERIOD, "the api of the scale profile ready")
        with httpx.Client(base_url=url, timeout=60) as client:
            with timed("compose (scale): 4 jobs on two workers"):
                jobs = [submit(client, source=f"/input/isbi2012/test/images/{i}.png") for i in range(4)]
                finished = [wait_for_job(client, j["id"], ("succeeded", "failed"), 300) for j in jobs]
            assert [j["status"] for j in finished] == ["succeeded"] * 4, finished
            with timed("compose (scale): a worker killed mid-job, its job finished by the other"):
                kill_a_worker_mid_job(client, project)
    finally:
        compose(project, *options, "down", "-v", "-t", "3", env=env, files=files)


def job_worker(project: str, job_id: str) -> str:
    """The ``worker`` column of a job (``HOSTNAME:PID``), read from the stack's PostgreSQL."""
    query = f"SELECT coalesce(worker, '') FROM jobs WHERE id = '{job_id}'"
    return podman("exec", f"{project}_postgres_1", "psql", "-U", "tileseg", "-d", "tileseg", "-tAc", query).strip()


def kill_a_worker_mid_job(client: httpx.Client, project: str) -> None:
    """``podman kill`` the worker container running a long job: the job is requeued once its lease
    expires and succeeds on the other worker."""
    job = submit(client, source="/input/geotiff/shade.tif", tile="128", **LONG)
    wait_for_job(client, job["id"], ("running",), 120, check=lambda j: j["progress"]["tiles_done"] > 0)
    hosts = {
        podman("inspect", "--format", "{{.Config.Hostname}}", f"{project}_{service}_1").strip(): service
        for service in ("worker-gpu0", "worker-gpu1")
    }
    first = job_worker(project, job["id"]).split(":")[0]
    assert first in hosts, f"the job runs on {first!r}, not one of the workers {hosts}"
    victim = f"{project}_{hosts[first]}_1"
    podman("kill", victim)
    done = wait_for_job(client, job["id"], ("succeeded", "failed"), 300)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2, "it ran again once the killed worker's lease expired"
    second = job_worker(project, job["id"]).split(":")[0]
    assert podman("inspect", "--format", "{{.State.Running}}", victim).strip() == "false"
    assert second in hosts and second != first, f"the other worker finished it, not {second!r}"
