"""Real containers for the deployment tests: podman, and Debian's docker-compose on podman's Docker-compatible
socket, as ``.ci/containers.sh`` sets them up (apt packages, the Debian base image made locally, the socket
and the healthcheck pump). Where they are missing the tests fail and say how to get them, never skip.

Everything a test makes is named with the session's :data:`PREFIX`, so that cleaning up removes exactly
that (several sessions may share the machine's podman), and recorded in :data:`TIMINGS` for the summary that
``tests/deploy/conftest.py`` prints at the end of the run (image sizes, build times, each step's time).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO

SETUP = REPO / ".ci" / "containers.sh"
HINT = f"run `{SETUP.relative_to(REPO)} setup` as root (what .ci/run does)"
BASE_IMAGE = os.environ.get("BASE_IMAGE", "localhost/debian-base:bookworm")
TAG = "ci-cpu"
IMAGE = f"localhost/tileseg:{TAG}"
# the Dockerfile's stages of GBs that a changed source leaves as they are (`deps`: PyTorch and the dependencies;
# `env`: them copied under the service's user), kept tagged from one session to the next: the next build
# rebuilds only what the source changed, and pruning the untagged leaves them
CACHED_STAGES = {stage: f"localhost/tileseg:{TAG}-{stage}" for stage in ("deps", "env")}
BUILT_HERE = "org.tileseg.tests=built"  # the label of every image these tests build: all they ever prune
REDIS_IMAGE = "localhost/tileseg-ci-redis:7"
POSTGRES_IMAGE = "localhost/tileseg-ci-postgres:15"
PREFIX = f"tsci{uuid.uuid4().hex[:6]}"  # this session's containers, volumes, networks, compose projects
# what the CI build passes in: the host's CA (pip reaches PyPI through a TLS proxy) and its local wheels
HOST_CA = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
WHEELS = Path(os.environ.get("PIP_FIND_LINKS") or "/opt/wheels")

TIMINGS: list[tuple[str, str]] = []  # (what, measured) for the end-of-run summary


def podman(*args: str, timeout: float = 120, check: bool = True, input: str | None = None) -> str:
    """``podman ARGS``; its stdout. Raises AssertionError with its output when it fails and ``check``."""
    binary = shutil.which("podman")
    if binary is None:
        pytest.fail(f"podman is not installed: {HINT}")
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and done.returncode:
        raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


@contextmanager
def timed(what: str):
    """Record how long the block took under ``what``."""
    start = time.monotonic()
    yield
    TIMINGS.append((what, f"{time.monotonic() - start:.1f} s"))


def build(image: str, dockerfile: Path, context: Path, target: str | None = None, **args: str) -> None:
    """``podman build`` as CI does it (to the stage ``target``, else the last): host networking, the base image
    local, the host's CA and wheels mounted for pip; records the build time and the image's size."""
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE]).returncode:
        pytest.fail(f"the base image {BASE_IMAGE} is missing: {HINT}")
    # docker format: the OCI format has no HEALTHCHECK
    command = [
        "build",
        "--format",
        "docker",
        "--network",
        "host",
        "-f",
        str(dockerfile),
        "-t",
        image,
        "--build-arg",
        f"BASE={BASE_IMAGE}",
    ]
    command += ["-v", f"{HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    if WHEELS.is_dir():
        command += ["-v", f"{WHEELS}:{WHEELS}:ro", "--build-arg", f"PIP_FIND_LINKS={WHEELS}"]
    for name, value in args.items():
        command += ["--build-arg", f"{name}={value}"]
    if target is not None:
        command += ["--target", target]
    command += ["--label", BUILT_HERE]
    with timed(f"build {image}"):
        podman(*command, str(context), timeout=1500)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).strip())
    TIMINGS.append((f"size {image}", f"{size / 1e9:.2f} GB"))


class Container:
    """A container of this session: ``podman run -d`` with a name under :data:`PREFIX`."""

    def __init__(self, name: str, image: str, *options: str, command: tuple[str, ...] = ()):
        self.name = f"{PREFIX}-{name}"
        self.image, self.options, self.command = image, options, command

    def run(self) -> Container:
        podman("run", "-d", "--name", self.name, *self.options, self.image, *self.command)
        return self

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).strip()

    def logs(self) -> str:
        done = subprocess.run(["podman", "logs", self.name], capture_output=True, text=True, timeout=60)
        return (done.stdout + done.stderr)[-6000:]

    def exec(self, *args: str) -> str:
        return podman("exec", self.name, *args)

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


def wait_until(probe: Callable[[], object], timeout: float, what: str, log: Callable[[], str] = str) -> object:
    """Call ``probe`` until it returns something true (exceptions count as false); that value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (httpx.HTTPError, OSError) as err:
            last = err
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})\n{log()}")


def ready(url: str) -> Callable[[], bool]:
    """A probe: ``GET url/readyz`` answers 200."""
    return lambda: httpx.get(f"{url}/readyz", timeout=3).status_code == 200


def compose(project: str, *args: str, env: dict[str, str], files: list[Path], timeout: float = 600) -> str:
    """Debian's ``docker-compose -p PROJECT -f FILE... ARGS`` on podman's socket; its output."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(f"docker-compose is not installed: {HINT}")
    command = [binary, "-p", project, *(a for f in files for a in ("-f", str(f))), *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise AssertionError(
            f"docker-compose {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout + done.stderr


def cleanup() -> None:
    """Remove every container, pod, volume and network of this session."""
    ids = podman("ps", "-aq", "--filter", f"name=^{PREFIX}", check=False).split()
    if ids:
        podman("rm", "-f", "-t", "0", *ids, check=False)
    for kind in ("volume", "network"):
        names = [n for n in podman(kind, "ls", "--format", "{{.Name}}", check=False).split() if n.startswith(PREFIX)]
        if names:
            podman(kind, "rm", "-f", *names, check=False)


def release_images(*images: str) -> None:
    """Remove ``images`` and the untagged images that these tests' earlier builds left (by their label: no one
    else's): an image of the service takes GBs, which must not outlast the tests that need it (CI machines keep
    podman's storage)."""
    if images:
        podman("rmi", "-f", *images, check=False, timeout=600)
    podman("image", "prune", "-f", "--filter", f"label={BUILT_HERE}", check=False, timeout=600)


def job_json(response: httpx.Response) -> dict:
    assert response.status_code == 202, response.text
    return json.loads(response.text)
