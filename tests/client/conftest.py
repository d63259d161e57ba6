"""The client against the real server on loopback (``tests/api/conftest.py``): the shared server has API keys
on, the shared data as an input root and the test networks (``rgb-test``, ``grey-test``, ``slow``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from tests.api.conftest import KEY_A, Server, inputs_root, server, server_env, test_architectures, weights  # noqa: F401 (fixtures)
from tileseg.cli import cli
from tileseg.client import Client


@pytest.fixture(scope="session")
def isbi(data_dir) -> Path:
    """A real 512 x 512 greyscale electron micrograph (ISBI 2012)."""
    return data_dir / "isbi2012" / "test" / "images" / "1.png"


@pytest.fixture
def remote(server):  # noqa: F811 (fixture)
    """A client of the shared server with key A."""
    with Client(server.url, api_key=KEY_A) as c:
        yield c


def read(path: Path) -> np.ndarray:
    """A raster's pixels, all bands."""
    with rasterio.open(path) as src:
        return src.read()


def run_cli(*args: str, env: dict[str, str] | None = None):
    """``tileseg ARGS`` in this process; the click result (output and exit code)."""
    return CliRunner().invoke(cli, list(args), env=env)


def local_mask(weights: Path, image: Path, out: Path, model: str, *options: str) -> np.ndarray:  # noqa: F811
    """The mask a local ``tileseg segment`` makes, run as the test server runs its jobs (one torch thread,
    batch 4), so that both take the tuner's one choice for this machine."""
    import torch

    threads = torch.get_num_threads()
    env = {"TILESEG_WEIGHTS_DIR": str(weights), "TILESEG_TORCH_THREADS": "1"}
    try:
        result = run_cli("segment", str(image), str(out), "--model", model, "--batch", "4", "-q", *options, env=env)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return read(out)
