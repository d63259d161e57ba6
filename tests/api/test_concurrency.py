"""Ten jobs submitted at once, by ten clients: all succeed, each with its own, correct mask."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from tests.api.conftest import submit, wait_for
from tileseg import models
from tileseg.engine import SegmentOptions, segment


def crops(source: Path, folder: Path, count: int, side: int = 96) -> list[Path]:
    """``count`` different ``side``-pixel crops of a real scene, each a GeoTIFF with its own transform."""
    paths = []
    with rasterio.open(source) as src:
        for i in range(count):
            col, row = 40 + 57 * i, 60 + 41 * i
            window = Window(col, row, side, side)
            transform = src.transform @ Affine.translation(col, row)
            profile = {**src.profile, "width": side, "height": side, "transform": transform}
            path = folder / f"crop{i}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=window))
            paths.append(path)
    return paths


def test_ten_jobs_at_once(server, weights, data_dir, tmp_path):
    images = crops(data_dir / "geotiff" / "RGB.byte.tif", tmp_path, 10)

    def one(image: Path) -> tuple[Path, bytes]:
        with server.client() as client:
            response = submit(client, image)
            assert response.status_code == 202, response.text
            job = wait_for(client, response.json()["id"], timeout=180)
            assert job["status"] == "succeeded", job
            assert job["input"]["name"] == image.name
            return image, client.get(job["links"]["mask"]).content

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, images))

    model = models.load(weights / "rgb-test.safetensors")
    for image, served in results:
        expected = segment(model, image, tmp_path / f"{image.stem}.expected.tif", SegmentOptions())
        (tmp_path / f"{image.stem}.served.tif").write_bytes(served)
        with rasterio.open(expected.output) as want, rasterio.open(tmp_path / f"{image.stem}.served.tif") as got:
            np.testing.assert_array_equal(got.read(), want.read())
            assert got.transform == want.transform and got.crs == want.crs
