"""Objects through the service: a real nuclei image, the shipped ``unet-nuclei`` served beside ``unet-em``, and the
labels a single local run makes of it (what every job must give back, whatever ran it).

Shared by ``tests/api/test_objects.py`` (a server running its jobs itself) and ``tests/scale/test_objects.py``
(queue mode, in shards).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from tests.api.conftest import Server
from tests.conftest import write_raster
from tests.instances.conftest import NAMES
from tileseg import models
from tileseg.engine import SegmentOptions, segment
from tileseg.training.data import read_image

# the numeric path every machine computes alike, the server's batch (TILESEG_BATCH in tests/api/conftest.py), and
# a tile that gives the image three tile rows (so three shards, with objects across both seams)
EXACT = {"precision": "fp32", "runtime": "torch", "tile": 96}
HEIGHT, WIDTH = 288, 256


def write_nuclei(data_dir: Path, path: Path, georeferenced: bool = False) -> Path:
    """Write a ``HEIGHT`` x ``WIDTH`` crop of a dense real nuclei image (DSB 2018; 369 nuclei in the whole image)
    to ``path``: pixel space, as microscopy is, unless ``georeferenced`` (UTM 18N, 0.5 m pixels, so that the
    labels' grid has a transform and a CRS to keep)."""
    image = read_image(data_dir / "dsb2018_nuclei" / "images" / f"{NAMES[2]}.png")[:, :HEIGHT, :WIDTH]
    grid = (
        {"crs": "EPSG:32618", "transform": Affine(0.5, 0, 500000, 0, -0.5, 4000000)}
        if georeferenced
        else {"crs": None, "transform": Affine.identity()}
    )
    return write_raster(path, np.ascontiguousarray(image), **grid)


@pytest.fixture(scope="session")
def nuclei_weights(tmp_path_factory, weights) -> Path:
    """A weights folder serving the shipped ``unet-nuclei`` (an instance model) and ``unet-em`` (none)."""
    folder = tmp_path_factory.mktemp("nuclei-weights")
    for suffix in (".safetensors", ".json"):
        shutil.copy(weights / f"unet-em{suffix}", folder / f"unet-em{suffix}")
        shutil.copy(models.weights_dir() / f"unet-nuclei{suffix}", folder / f"unet-nuclei{suffix}")
    return folder


@pytest.fixture(scope="module")
def nuclei_server(tmp_path_factory, server_env, nuclei_weights):
    """A server running its jobs itself, with keys, serving ``unet-nuclei`` and ``unet-em``."""
    data = tmp_path_factory.mktemp("objects-data")
    srv = Server(data, server_env(data, weights_dir=nuclei_weights), data.parent / "objects-server.log").start()
    yield srv
    srv.stop()


def reference_labels(source: Path, folder: Path) -> tuple[np.ndarray, dict]:
    """The labels (and their grid) of a single local ``segment()`` run of ``source`` with :data:`EXACT`, as the
    test server runs: one torch thread, batch 4."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = SegmentOptions(**EXACT, batch=4)
        result = segment(models.load("unet-nuclei"), source, folder / "mask.tif", options, instances=folder / "i.tif")
    finally:
        torch.set_num_threads(threads)
    labels, grid = read_labels(result.instances)
    assert result.objects == {"nucleus": int(labels.max())} and labels.max() > 20
    return labels, grid


def read_labels(path: Path) -> tuple[np.ndarray, dict]:
    """A label GeoTIFF's band and its grid (dtype, size, CRS, transform)."""
    with rasterio.open(path) as src:
        grid = {"dtype": src.dtypes[0], "count": src.count, "shape": src.shape, "crs": src.crs}
        return src.read(1), {**grid, "transform": src.transform}


def grid_of(path: Path) -> dict:
    """A raster's grid, as :func:`read_labels` gives it, without its dtype and bands."""
    with rasterio.open(path) as src:
        return {"shape": src.shape, "crs": src.crs, "transform": src.transform}
