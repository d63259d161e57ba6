"""The CPU image, built from the repository and run with podman as ``docker run`` would: ready within the
HEALTHCHECK's start period, jobs by upload and by ``source`` (a mounted folder) give the masks of the CLI,
the service runs as the non-root user, ``podman stop`` (SIGTERM) hands the running job back within the
grace and the restarted container finishes it from the volume; and a container with a missing weights
mount or an unwritable data volume stays up, says why in its log and answers ``/readyz`` 503."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio

from tests.backends import free_port
from tests.deploy.containers import PREFIX, Container, job_json, podman, ready, timed, wait_until

pytestmark = pytest.mark.slow

HEALTHCHECK_START_PERIOD = 120  # the Dockerfile's --start-period
# the same arithmetic in the container and the CLI: fp32 in PyTorch at one tile (the host and the container each
# measure their own runtime and window; an exported runtime or another window may differ in the last bits)
EXACT = {"precision": "fp32", "runtime": "torch", "tile": "256"}
# shade.tif (a hillshade in metres a pixel) is only a long input here: unet-em's card says 4 nm, so the
# default policy refuses it as far too coarse; read as it is, it keeps a worker busy for long enough
LONG = {"pixel_size_policy": "native"}
UID = 10001


def cli_mask(image: Path, out: Path, model: str) -> np.ndarray:
    """``tileseg segment`` on the host (the repository's environment) with :data:`EXACT`."""
    tileseg = Path(sys.executable).parent / "tileseg"
    flags = [a for k, v in {**EXACT, "compile": "off"}.items() for a in (f"--{k}", v)]
    done = subprocess.run(
        [str(tileseg), "segment", str(image), str(out), "--model", model, *flags],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    with rasterio.open(out) as src:
        return src.read()


def served_mask(client: httpx.Client, job: dict, out: Path) -> np.ndarray:
    """Wait for ``job`` to succeed; its mask, fetched through its link."""
    job = wait_for_job(client, job["id"], ("succeeded", "failed", "canceled"), 300)
    assert job["status"] == "succeeded", job
    out.write_bytes(client.get(job["links"]["mask"]).content)
    with rasterio.open(out) as src:
        return src.read()


def wait_for_job(client: httpx.Client, job_id: str, until: tuple[str, ...], timeout: float, check=None) -> dict:
    def probe():
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("failed", "canceled") and job["status"] not in until:
            raise AssertionError(f"job {job_id} ended {job['status']} while waiting for {until}: {job['error']}")
        return job if job["status"] in until and (check is None or check(job)) else None

    return wait_until(probe, timeout, f"job {job_id} reaching {until}")


def start_service(image: str, shared_input: str, volume: str, *options: str) -> tuple[Container, str]:
    """The image's default command with the data volume and the real data at /input; its URL once ready."""
    port = free_port()
    container = Container(
        "serve",
        image,
        "-p",
        f"127.0.0.1:{port}:8000",
        "-v",
        f"{volume}:/data",
        "-v",
        shared_input,
        "-e",
        "TILESEG_INPUT_ROOTS=/input",
        "-e",
        "TILESEG_MODELS=unet-em",
        *options,
    ).run()
    url = f"http://127.0.0.1:{port}"
    wait_until(ready(url), HEALTHCHECK_START_PERIOD, "/readyz 200 in the HEALTHCHECK's start period", container.logs)
    return container, url


def test_the_image_serves_jobs_as_the_cli_and_hands_back_on_sigterm(image, shared_input, data_dir, tmp_path):
    volume = f"{PREFIX}-data"
    with timed("image: start to /readyz 200"):
        container, url = start_service(image, shared_input, volume, "-e", "TILESEG_SHUTDOWN_GRACE=1")
    try:
        # the healthcheck itself (what `docker ps` shows), run as the engine runs it
        podman("healthcheck", "run", container.name)
        assert container.inspect("{{.State.Health.Status}}") == "healthy"
        status = container.exec("cat", "/proc/1/status")
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uids) == {str(UID)}, f"the service runs as uid {uids}, not the image's user {UID}"
        assert "tileseg serve" in container.exec("cat", "/proc/1/cmdline").replace("\0", " ")

        first = data_dir / "isbi2012" / "test" / "images" / "0.png"
        second = data_dir / "isbi2012" / "test" / "images" / "1.png"
        with httpx.Client(base_url=url, timeout=120) as client, timed("image: two jobs, upload and source"):
            with open(first, "rb") as fh:
                upload = job_json(client.post("/segment", data={"model": "unet-em", **EXACT}, files={"file": fh}))
            source = job_json(
                client.post(
                    "/segment",
                    files=[
                        (k, (None, v))
                        for k, v in {"model": "unet-em", "source": "/input/isbi2012/test/images/1.png", **EXACT}.items()
                    ],
                )
            )
            got_upload = served_mask(client, upload, tmp_path / "upload.tif")
            got_source = served_mask(client, source, tmp_path / "source.tif")
        np.testing.assert_array_equal(got_upload, cli_mask(first, tmp_path / "cli0.tif", "unet-em"))
        np.testing.assert_array_equal(got_source, cli_mask(second, tmp_path / "cli1.tif", "unet-em"))
        handed_back = stop_during_a_job(container, url)
    finally:
        container.remove()
    restart_finishes_it(image, shared_input, volume, handed_back, upload["id"])


def stop_during_a_job(container: Container, url: str) -> str:
    """A long job running, ``podman stop``: the container exits by itself (143) within the grace, and the
    job is back in the queue. Returns the job's id."""
    with httpx.Client(base_url=url, timeout=60) as client:
        big = {"model": "unet-em", "source": "/input/geotiff/shade.tif", **EXACT, "tile": "128", **LONG}
        job = job_json(client.post("/segment", files=[(k, (None, v)) for k, v in big.items()]))
        wait_for_job(client, job["id"], ("running",), 120, check=lambda j: j["progress"]["tiles_done"] > 0)
    began = time.monotonic()
    with timed("image: podman stop (SIGTERM) during a job"):
        podman("stop", "-t", "60", container.name, timeout=90)
    took = time.monotonic() - began
    assert container.inspect("{{.State.ExitCode}}") == "143", container.logs()
    assert took < 30, f"the stop took {took:.0f} s: the grace is 1 s, the container should not need a kill"
    return job["id"]


def restart_finishes_it(image: str, shared_input: str, volume: str, job_id: str, earlier: str) -> None:
    """A new container on the same volume: the handed-back job runs to the end; the earlier result is there."""
    container, url = start_service(image, shared_input, volume)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            job = wait_for_job(client, job_id, ("succeeded", "failed"), 300)
            assert job["status"] == "succeeded", job
            assert job["attempts"] == 1, "the attempt that SIGTERM interrupted is not counted"
            assert client.get(f"/jobs/{earlier}/mask").status_code == 200, "the volume kept the earlier result"
    finally:
        container.remove()
        podman("volume", "rm", "-f", volume, check=False)


def not_ready(image: str, *options: str) -> tuple[Container, str, dict]:
    """A service container with these mounts: it must stay up and answer /readyz 503; its answer."""
    port = free_port()
    container = Container(f"bad{port}", image, "-p", f"127.0.0.1:{port}:8000", *options).run()
    url = f"http://127.0.0.1:{port}"

    def answered():
        response = httpx.get(f"{url}/readyz", timeout=3)
        return response.json() if response.status_code == 503 else None

    body = wait_until(answered, 60, "/readyz 503", container.logs)
    assert httpx.get(f"{url}/livez", timeout=3).status_code == 200
    assert subprocess.run(["podman", "healthcheck", "run", container.name], capture_output=True).returncode != 0
    assert container.inspect("{{.State.Running}} {{.RestartCount}}") == "true 0", "no crash loop"
    return container, url, body


def test_a_missing_weights_mount_is_not_ready_with_the_reason(image, tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    container, _, body = not_ready(image, "-v", f"{empty}:/weights:ro")
    try:
        assert body["error"]["code"] == "not_ready"
        assert "no checkpoint" in body["error"]["message"] and "/weights" in body["error"]["message"]
        assert "preflight: not ready: no checkpoint" in container.logs()
    finally:
        container.remove()


def test_an_unwritable_data_volume_is_not_ready_until_it_is_fixed(image, tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # root's: the image's user may not write it
    container, url, body = not_ready(image, "-v", f"{data}:/data", "-e", "TILESEG_MODELS=unet-em")
    try:
        assert "/data is not writable by uid 10001" in body["error"]["message"]
        assert "preflight: not ready: the data directory /data is not writable" in container.logs()
        data.chmod(0o777)  # the operator fixes the volume: the service starts without a restart
        wait_until(ready(url), 120, "/readyz 200 once the volume is writable", container.logs)
    finally:
        container.remove()
