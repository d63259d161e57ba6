"""The Docker image's install and start steps, run as CI can run them (no Docker engine here): the Dockerfile
runs ``docker/install.sh`` and starts through ``docker/entrypoint.sh``; this test runs the same two scripts,
the install with ``TORCH_VARIANT=cpu`` into a fresh virtual environment (no system site-packages, nothing
from the repository's environment), then starts the service from it and has it segment an image. A broken
install or start step fails here."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import rasterio

from tests.backends import free_port
from tests.conftest import REPO
from tests.engine import nets
from tileseg.engine import SegmentOptions, segment

pytestmark = pytest.mark.slow


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, rest), continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_the_dockerfile_installs_and_starts_through_the_scripts():
    steps = instructions((REPO / "Dockerfile").read_text())
    runs = [rest for keyword, rest in steps if keyword == "RUN"]
    assert any("docker/install.sh" in run for run in runs), "the install step is docker/install.sh"
    copies = [rest for keyword, rest in steps if keyword == "COPY"]
    entry = json.loads(next(rest for keyword, rest in steps if keyword == "ENTRYPOINT"))
    assert entry[:2] == ["tini", "--"], "an init as PID 1: SIGTERM ends the service with 143"
    assert any(c.startswith("docker/entrypoint.sh ") and c.split()[-1].endswith(entry[-1]) for c in copies)
    assert ("ARG", "TORCH_VARIANT=cuda") in steps, "the CUDA image is the default"
    assert ("ARG", "BASE=debian:bookworm-slim") in steps and ("FROM", "${BASE} AS base") in steps, (
        "the base is an argument"
    )
    user = [rest for keyword, rest in steps if keyword == "USER"]
    assert user and user[-1] not in ("root", "0"), "the service runs as a user that is not root"
    assert any(k == "HEALTHCHECK" and "/readyz" in r for k, r in steps)
    assert any(k == "ENV" and "TILESEG_WEIGHTS_DIR=/weights" in r for k, r in steps)


def test_the_install_and_start_scripts_give_a_working_service(tmp_path, data_dir):
    venv, shipped = tmp_path / "venv", tmp_path / "shipped-weights"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TILESEG_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(
        TORCH_VARIANT="cpu",
        TORCH_INDEX_URL="pip",
        VENV=str(venv),
        SRC=str(REPO),
        WEIGHTS_DIR=str(shipped),
        PYTHON=sys.executable,
    )
    done = subprocess.run(
        ["bash", str(REPO / "docker" / "install.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"docker/install.sh failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    assert "2.13.0+cpu | cpu build" in done.stdout
    expected_weights = sorted(p.name for p in (REPO / "weights").glob("*") if p.suffix in (".json", ".safetensors"))
    assert sorted(p.name for p in shipped.iterdir()) == expected_weights, "the shipped checkpoints are copied"

    # a small checkpoint of a real architecture (the installed package knows no test networks)
    nets.register()
    model = nets.checkpoint(tmp_path, "unet", bands=1, classes=2, name="tiny-unet", padding="same", depth=2, base=4)
    nets.unregister()
    port = free_port()
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("TILESEG_", "PYTHON", "VIRTUAL_ENV"))}
    run_env.update(
        PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
        TILESEG_DATA_DIR=str(tmp_path / "data"),
        TILESEG_WEIGHTS_DIR=str(tmp_path / "weights"),
        TILESEG_DEVICE="cpu",
        TILESEG_TORCH_THREADS="1",
        OMP_NUM_THREADS="1",
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [
                str(REPO / "docker" / "entrypoint.sh"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=tmp_path,
            env=run_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        image = data_dir / "isbi2012" / "test" / "images" / "0.png"
        with httpx.Client(base_url=url, timeout=60) as client, open(image, "rb") as fh:
            job = client.post("/segment", data={"model": "tiny-unet"}, files={"file": ("0.png", fh)}).json()
            while (job := client.get(f"/jobs/{job['id']}").json())["status"] in ("queued", "running"):
                time.sleep(0.1)
            assert job["status"] == "succeeded", job
            (tmp_path / "served.tif").write_bytes(client.get(job["links"]["mask"]).content)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == -signal.SIGTERM, log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    expected = segment(model, image, tmp_path / "expected.tif", SegmentOptions()).output
    with rasterio.open(tmp_path / "served.tif") as got, rasterio.open(expected) as want:
        np.testing.assert_array_equal(got.read(), want.read())
