"""Fixtures of the container tests: podman's socket and healthcheck pump (started here when ``.ci/run`` has
not), the images built once a session, and a summary of image sizes, build times and each step's time."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.deploy import containers


@pytest.fixture(scope="session")
def docker_host():
    """``DOCKER_HOST`` of podman's socket, with the healthcheck pump running; stopped after if started here."""
    if subprocess.run(["podman", "info"], capture_output=True).returncode:
        pytest.fail(f"podman does not work here: {containers.HINT}")
    running = Path("/run/tileseg-ci/podman.pid").exists()  # .ci/run started it: leave it to .ci/run
    done = subprocess.run([str(containers.SETUP), "start"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    host = subprocess.run([str(containers.SETUP), "env"], capture_output=True, text=True).stdout.strip()
    yield host.split("=", 1)[1]
    if not running:
        subprocess.run([str(containers.SETUP), "stop"], capture_output=True)


@pytest.fixture(scope="package")
def image(docker_host) -> str:
    """The CPU image, built from the repository as CI builds it; removed after these tests with what builds
    left untagged, so the rest of the run has its disk. Its stages that the source does not change stay, tagged:
    the next build's cache."""
    containers.release_images()
    args = {"TORCH_VARIANT": "cpu", "TORCH_INDEX_URL": "pip"}
    for stage, tag in containers.CACHED_STAGES.items():
        containers.build(tag, REPO / "Dockerfile", REPO, target=stage, **args)
    containers.build(containers.IMAGE, REPO / "Dockerfile", REPO, **args)
    yield containers.IMAGE
    containers.cleanup()
    containers.release_images(containers.IMAGE)


@pytest.fixture(scope="session")
def backing_images(docker_host) -> dict[str, str]:
    """Redis and PostgreSQL images made from Debian's packages (.ci/images/)."""
    folder = REPO / ".ci" / "images"
    containers.build(containers.REDIS_IMAGE, folder / "redis.Dockerfile", folder)
    containers.build(containers.POSTGRES_IMAGE, folder / "postgres.Dockerfile", folder)
    return {"TILESEG_REDIS_IMAGE": containers.REDIS_IMAGE, "TILESEG_POSTGRES_IMAGE": containers.POSTGRES_IMAGE}


@pytest.fixture(scope="session")
def shared_input(data_dir) -> str:
    """``-v`` for the real data, read-only at /input (the ``source`` root of the containers)."""
    return f"{os.path.realpath(data_dir)}:/input:ro"


def pytest_terminal_summary(terminalreporter):
    if containers.TIMINGS:
        terminalreporter.section("deployment: images and steps")
        for what, measured in containers.TIMINGS:
            terminalreporter.write_line(f"{what:<60} {measured:>10}")
