"""A real server on loopback for the API tests: ``tileseg serve`` in a subprocess, with its own data folder,
test checkpoints in a temporary weights folder, and one torch thread (CI shares two cores).

``server`` is the module's shared server (API keys on, the shared data and a temporary folder as input
roots); ``start_server`` starts more, with other settings, for the tests that stop, kill and restart them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.api import nets
from tests.backends import free_port
from tests.conftest import REPO
from tests.engine.nets import checkpoint

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
MAX_UPLOAD = 8 << 20

# Shipped models that the real-image flow test (tests/api/test_flow.py) runs besides the test networks.
SHIPPED_MODELS: list[str] = ["unet-em"]


@pytest.fixture(autouse=True)
def test_architectures():
    """In-process runs (the CLI the server is compared with) load the test networks by name."""
    nets.register()
    yield
    nets.unregister()


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """Test checkpoints: ``rgb-test`` (3 bands, 4 classes), ``grey-test`` (1 band uint8, 2 classes) and
    ``slow`` (1 band, 200 classes, sleeps 0.1 s a batch; its mask is the input shifted, capped at 199) and
    ``nested`` (a small U-Net++ of depth 2, which can be pruned) and ``rgb-2um`` (3 bands, 4 classes, trained
    at a pixel size of 2 µm: inputs at another are read resampled)."""
    nets.register()
    root = tmp_path_factory.mktemp("api-weights")
    checkpoint(root, "test-pool", bands=3, classes=4, name="rgb-test")
    checkpoint(root, "test-pool", bands=1, classes=2, name="grey-test", dtypes=["uint8"], seed=1)
    checkpoint(root, "test-slow", bands=1, classes=200, name="slow", delay=0.1)
    checkpoint(root, "unetpp", bands=1, classes=2, name="nested", depth=2, base=4)
    checkpoint(root, "test-pool", bands=3, classes=4, name="rgb-2um", pixel_size=2e-6, seed=2)
    for name in SHIPPED_MODELS:
        for suffix in (".safetensors", ".json"):
            shutil.copy(REPO / "weights" / f"{name}{suffix}", root / "weights" / f"{name}{suffix}")
    nets.unregister()
    return root / "weights"


class ChildProcess:
    """A command of the product in a subprocess, its output in ``self.log``; SIGTERM stops it (then a kill
    after 60 s)."""

    log: Path
    process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Server(ChildProcess):
    """``tileseg serve`` in a subprocess on a free loopback port.

    ``command`` replaces the default command line; ``{port}`` in it becomes the server's port.
    """

    def __init__(self, data_dir: Path, env: dict[str, str], log: Path, command: list[str] | None = None):
        self.data_dir = data_dir
        self.env = env
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = command or [
            sys.executable,
            "-m",
            "tests.api.serve",
            "--port",
            "{port}",
            "--log-level",
            "warning",
        ]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Server:
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not get ready in {timeout} s:\n{self.log_tail()}")

    def client(self, key: str | None = KEY_A) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key} if key else {}, timeout=60)


@pytest.fixture(scope="session")
def inputs_root(tmp_path_factory) -> Path:
    """A temporary input root (a second allowed folder, beside the shared data)."""
    return tmp_path_factory.mktemp("inputs")


@pytest.fixture(scope="session")
def server_env(weights, data_dir, inputs_root):
    """The environment of a test server; ``server_env(data, **settings)`` adds TILESEG_* settings."""

    def make(data: Path, **settings) -> dict[str, str]:
        # the session's tuner cache and search bound (tests/conftest.py) reach the servers; no other setting does
        kept = ("TILESEG_CACHE_DIR", "TILESEG_TUNE_SECONDS", "TILESEG_SHARED_DATA")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILESEG_") or k in kept}
        env.update(
            {
                "TILESEG_DATA_DIR": str(data),
                "TILESEG_WEIGHTS_DIR": str(weights),
                "TILESEG_DEVICE": "cpu",
                "TILESEG_TORCH_THREADS": "1",
                "OMP_NUM_THREADS": "1",
                "TILESEG_API_KEYS": f"{KEY_A},{KEY_B}",
                "TILESEG_INPUT_ROOTS": f"{data_dir},{inputs_root}",
                "TILESEG_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
                "TILESEG_SWEEP_INTERVAL": "5",
                # a fixed batch: the lifecycle tests time their jobs by the slow net's 0.1 s a forward pass
                "TILESEG_BATCH": "4",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update({f"TILESEG_{k.upper()}": str(v) for k, v in settings.items()})
        return env

    return make


@pytest.fixture(scope="session")
def server(tmp_path_factory, server_env):
    """The shared server of the API tests."""
    data = tmp_path_factory.mktemp("server-data")
    srv = Server(data, server_env(data), data.parent / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    """A client of the shared server with key A."""
    with server.client() as c:
        yield c


@pytest.fixture
def start_server(tmp_path, server_env):
    """Start servers with their own settings: ``start_server(data_dir, **settings)``; all stopped after."""
    started: list[Server] = []

    def start(data: Path | None = None, **settings) -> Server:
        data = data or tmp_path / "data"
        srv = Server(data, server_env(data, **settings), tmp_path / f"server-{len(started)}.log").start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def wait_for(
    client: httpx.Client,
    job_id: str,
    until=("succeeded", "failed", "canceled", "expired"),
    timeout: float = 120,
    check=None,
) -> dict:
    """Poll a job until its status is one of ``until`` (and ``check(job)`` holds, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in until and (check is None or check(job)):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is still {job['status']} after {timeout} s: {job}")
        time.sleep(0.1)


def submit(
    client: httpx.Client, path: Path | None = None, model: str = "rgb-test", name: str | None = None, **fields
) -> httpx.Response:
    """``POST /segment`` with an upload of ``path`` (or only the fields, e.g. ``source=...``)."""
    data = {"model": model, **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}}
    if path is None:  # still multipart: text parts only
        return client.post("/segment", files=[(k, (None, v)) for k, v in data.items()])
    with open(path, "rb") as fh:
        return client.post("/segment", data=data, files={"file": (name or path.name, fh)})
