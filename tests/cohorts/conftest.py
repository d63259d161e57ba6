"""The many-inputs form's tests: small real EM images (crops of the ISBI 2012 test volume, the shipped unet-em's
own kind of data), fixed run settings so that every run measures nothing and takes the same path, and a real
STAC API on loopback (rustac's server with its in-memory backend)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from PIL import Image

from tileseg.cli import cli

FIXED = ["--model", "unet-em", "--tile", "64", "--batch", "2", "--precision", "fp32", "--runtime", "torch",
         "--compile", "off", "-q"]  # fmt: skip
SIZE = 128


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def manifest(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]


def write_em(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8") as dst:
        dst.write(data[None])
    return path


@pytest.fixture(scope="session")
def em_crops(data_dir) -> list[np.ndarray]:
    """Six different SIZE x SIZE crops of the ISBI 2012 test images."""
    images = sorted((data_dir / "isbi2012" / "test" / "images").glob("*.png"))[:3]
    crops = []
    for path in images:
        array = np.asarray(Image.open(path))
        crops += [array[:SIZE, :SIZE].copy(), array[-SIZE:, -SIZE:].copy()]
    return crops


@pytest.fixture
def em_folder(tmp_path, em_crops):
    """A folder of four EM GeoTIFFs, em0.tif ... em3.tif."""
    folder = tmp_path / "in"
    for i in range(4):
        write_em(folder / f"em{i}.tif", em_crops[i])
    return folder


@pytest.fixture(scope="session")
def expected_masks(tmp_path_factory, em_crops) -> list[np.ndarray]:
    """Each crop's mask from a run of the engine on it alone, with the options of :data:`FIXED` (the reference
    the many-inputs form must equal)."""
    from tileseg import models
    from tileseg.engine.options import SegmentOptions
    from tileseg.engine.pipeline import segment

    folder = tmp_path_factory.mktemp("single")
    model = models.load("unet-em")
    options = SegmentOptions(tile=64, batch=2, precision="fp32", runtime="torch", compile="off")
    masks = []
    for i, crop in enumerate(em_crops):
        source = write_em(folder / f"em{i}.tif", crop)
        segment(model, source, folder / f"mask{i}.tif", options)
        masks.append(read(folder / f"mask{i}.tif"))
    assert len({m.tobytes() for m in masks}) == len(masks)  # different images, different masks
    return masks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StacApi:
    """rustac's STAC API server on loopback, serving a collection and its items from memory."""

    def __init__(self, folder: Path, collection: dict, items: list[dict]):
        self.folder = folder
        (folder / "collection.json").write_text(json.dumps(collection))
        (folder / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> StacApi:
        program = shutil.which("rustac", path=str(Path(sys.executable).parent)) or shutil.which("rustac")
        if program is None:
            pytest.fail("rustac is not installed: pip install -e '.[test]'")
        self.process = subprocess.Popen(
            [program, "serve", "collection.json", "items.json", "--addr", f"127.0.0.1:{self.port}"],
            cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/collections", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        pytest.fail("rustac serve did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


def stac_item(item_id: str, href: Path, day: str, west: float) -> dict:
    """An item of one single-band asset (``visual``) over a 1 x 1 degree square from ``west``."""
    ring = [[west, 0.0], [west + 1, 0.0], [west + 1, 1.0], [west, 1.0], [west, 0.0]]
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": "em-scenes", "links": [],
        "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": [west, 0.0, west + 1, 1.0],
        "properties": {"datetime": f"{day}T00:00:00Z"},
        "assets": {"visual": {"href": href.as_uri(), "type": "image/tiff; application=geotiff"}},
    }  # fmt: skip


COLLECTION = {
    "type": "Collection", "stac_version": "1.0.0", "id": "em-scenes", "description": "EM crops", "license": "MIT",
    "links": [],
    "extent": {"spatial": {"bbox": [[0, 0, 4, 1]]}, "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]}},
}  # fmt: skip


@pytest.fixture
def stac_api(tmp_path, em_crops):
    """A STAC API with four items em0..em3 (1 x 1 degree squares side by side from 0 E; January to April 2024),
    their assets the local GeoTIFFs ``tmp_path/assets/emN.tif``."""
    items = []
    for i in range(4):
        tif = write_em(tmp_path / "assets" / f"em{i}.tif", em_crops[i])
        items.append(stac_item(f"em{i}", tif, f"2024-0{i + 1}-15", float(i)))
    api = StacApi(tmp_path, COLLECTION, items).start()
    api.items = items  # type: ignore[attr-defined]
    yield api
    api.stop()
