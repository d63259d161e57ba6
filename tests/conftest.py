"""Shared fixtures: where the real data lie, and small rasters written into a temporary folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

REPO = Path(__file__).resolve().parent.parent
# Runtime measurements go to a folder of the test session's own, not the user's cache (servers and the
# processes tests spawn inherit it), removed when the session ends: a run leaves nothing on the disk but what
# failed.
if "TILESEG_TESTS_CACHE_DIR" not in os.environ:
    os.environ["TILESEG_TESTS_CACHE_DIR"] = tempfile.mkdtemp(prefix="tileseg-cache-")
    atexit.register(shutil.rmtree, os.environ["TILESEG_TESTS_CACHE_DIR"], True)
os.environ["TILESEG_CACHE_DIR"] = os.environ["TILESEG_TESTS_CACHE_DIR"]
# The tuner's search is bounded for the tests: they check what it chooses, not how fast it runs (servers and
# workers inherit the bound; bench/runtime.py measures the real search).
os.environ.setdefault("TILESEG_TUNE_SECONDS", "1")


# Tests that need a system service or program beside Python (scripts/test-deps.sh installs them): the folders
# that are all such tests, and the fixtures that start one. They are marked `system`; `make test-quick` leaves
# them out, `make test` runs them (and fails, never skips, where one is missing).
SYSTEM_FOLDERS = ("deploy", "qgis", "scale")
SYSTEM_MODULES = ("api/test_page.py",)  # Chromium
SYSTEM_FIXTURES = {"redis_server", "postgres", "docker_host"}


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).resolve().parent
    for item in items:
        where = Path(str(item.fspath)).resolve().relative_to(tests).as_posix()
        if (
            where.split("/", 1)[0] in SYSTEM_FOLDERS
            or where in SYSTEM_MODULES
            or SYSTEM_FIXTURES & set(getattr(item, "fixturenames", ()))
        ):
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data (``TILESEG_SHARED_DATA``, default ``../shared/data`` beside the repository)."""
    path = Path(os.environ.get("TILESEG_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (path / "geotiff" / "RGB.byte.tif").is_file():
        pytest.fail(f"the real data are not at {path}: set TILESEG_SHARED_DATA")
    return path


def write_raster(path: Path, data: np.ndarray, **profile) -> Path:
    """Write ``(bands, H, W)`` data as a GeoTIFF with a real CRS (UTM 18N) unless told otherwise."""
    bands, height, width = data.shape
    base = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": data.dtype.name,
        "crs": "EPSG:32618",
        "transform": Affine(30, 0, 500000, 0, -30, 4000000),
    }
    with rasterio.open(path, "w", **{**base, **profile}) as dst:
        dst.write(data)
    return path


@pytest.fixture
def raster_factory(tmp_path):
    """Make small random uint8 rasters: ``raster_factory(height, width, bands=1, high=256)``."""
    rng = np.random.default_rng(0)

    def make(height: int, width: int, bands: int = 1, high: int = 256, name: str | None = None, **profile) -> Path:
        data = rng.integers(0, high, size=(bands, height, width), dtype=np.uint8)
        return write_raster(tmp_path / (name or f"in_{height}x{width}x{bands}.tif"), data, **profile)

    return make


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real ``redis-server`` on loopback for the session (no persistence); fails, never skips, if missing."""
    from tests.backends import MissingTool, RedisServer

    try:
        server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    except MissingTool as err:
        pytest.fail(str(err))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on loopback for the session; fails, never skips, if missing."""
    from tests.backends import MissingTool, PostgresCluster

    try:
        cluster = PostgresCluster().start()
    except MissingTool as err:
        pytest.fail(str(err))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback for the session (each test makes its own buckets)."""
    from tests.backends import S3Server

    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The session's S3 endpoint, with the AWS variables a user would set in this process's environment (and
    so in the servers and workers it starts)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return s3_server


@pytest.fixture(autouse=True)
def _engine_config_from_the_environment():
    """Every test starts with the engine reading its configuration from the environment, whatever a service
    started by an earlier test handed over (:func:`tileseg.config.use`)."""
    from tileseg import config

    config.use(None)
    yield
    config.use(None)


@pytest.fixture(scope="session")
def nuclei_dir(data_dir):
    return data_dir / "dsb2018_nuclei"


@pytest.fixture(scope="session")
def real_nuclei(nuclei_dir):
    """(name, image (3, H, W) uint8, instance labels (H, W)) of the real nuclei images of
    :data:`tests.instances.conftest.NAMES`."""
    from tests.instances.conftest import NAMES
    from tileseg.training.data import read_image
    from tileseg.training.nuclei import read_instances

    found = []
    for name in NAMES:
        image = read_image(nuclei_dir / "images" / f"{name}.png")
        found.append((name, image, read_instances(nuclei_dir / "labels" / f"{name}.png")))
    return found
