"""What remote reads are configured with, in every thread, and what they read: a small region of interest of
a file without a pyramid reads a share of it that does not include the whole file (statistics from sampled
blocks, not a decimated read of every block), and a server without Range is named as such, not as a format."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import rasterio
from rasterio.env import get_gdal_config

from tests.engine.nets import checkpoint
from tests.engine.test_remote import RangeServer
from tileseg.engine import segment
from tileseg.engine.errors import NoRangeSupportError
from tileseg.engine.io import gdalconfig
from tileseg.engine.io.bands import STATS_BLOCKS, percentiles
from tileseg.engine.options import SegmentOptions


def in_thread(fn):
    box: list = []
    thread = threading.Thread(target=lambda: box.append(fn()))
    thread.start()
    thread.join()
    return box[0]


def test_options_set_inside_an_env_reach_every_other_thread(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TILESEG_HTTP_CONNECT_TIMEOUT", "7")

    def configure_inside_an_env():
        with rasterio.Env():  # as a service's worker thread configures, inside gdal_env
            gdalconfig.apply()

    in_thread(configure_inside_an_env)
    # a reader thread that entered no environment sees them (rasterio's set_gdal_config would not)
    assert in_thread(lambda: get_gdal_config("AWS_S3_ENDPOINT")) == "127.0.0.1:9"
    assert in_thread(lambda: get_gdal_config("GDAL_HTTP_CONNECTTIMEOUT")) == 7
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    gdalconfig.apply()  # an option no longer wanted is unset
    assert in_thread(lambda: get_gdal_config("AWS_S3_ENDPOINT")) is None


def uint16_tiff(path, size: int) -> None:
    """A tiled (256²), deflate, 3-band uint16 GeoTIFF without overviews."""
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 60000, (3, size // 32 + 1, size // 32 + 1))
    data = np.repeat(np.repeat(coarse, 32, axis=1), 32, axis=2)[:, :size, :size]
    data = (data + rng.normal(0, 500, data.shape)).clip(0, 65535).astype(np.uint16)
    profile = dict(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path, "w", width=size, height=size, count=3, dtype="uint16", **profile) as dst:
        dst.write(data)


@pytest.fixture
def u16_model(tmp_path):
    return checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="u16", dtypes=["uint8", "uint16"])


def test_a_small_roi_of_a_file_without_pyramid_reads_a_share_of_it(tmp_path, u16_model):
    uint16_tiff(tmp_path / "big.tif", 2048)
    x0, y0, side = 1100, 900, 250
    ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
    (tmp_path / "roi.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    options = SegmentOptions(runtime="torch", precision="fp32", tile=128, roi=str(tmp_path / "roi.geojson"))
    server = RangeServer(tmp_path)
    try:
        segment(u16_model, f"{server.url}/big.tif", tmp_path / "served.tif", options)
    finally:
        server.close()
    segment(u16_model, tmp_path / "big.tif", tmp_path / "local.tif", options)
    with rasterio.open(tmp_path / "served.tif") as a, rasterio.open(tmp_path / "local.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    size = (tmp_path / "big.tif").stat().st_size
    # before: a decimated read of every block for the statistics, 119 % of the file
    assert server.bytes_served < 0.6 * size, f"{server.bytes_served} of {size} bytes"


def test_statistics_of_a_tiled_file_without_pyramid_read_a_sample_of_blocks(tmp_path):
    uint16_tiff(tmp_path / "big.tif", 2048)
    reads: list = []
    with rasterio.open(tmp_path / "big.tif") as src:
        real = src.read

        def counted(*args, **kwargs):
            reads.append(kwargs.get("window"))
            return real(*args, **kwargs)

        src.read = counted
        low, high = percentiles(src, (1, 2, 3))
    assert len(reads) == STATS_BLOCKS and all(w is not None and w.width == w.height == 256 for w in reads)
    assert (low < high).all() and low.min() >= 0 and high.max() < 60000


def test_a_server_without_range_is_named_not_a_format(tmp_path, u16_model):
    uint16_tiff(tmp_path / "scene.tif", 1024)
    server = RangeServer(tmp_path, ranges=False)
    try:
        with pytest.raises(NoRangeSupportError, match="does not support Range requests"):
            segment(u16_model, f"{server.url}/scene.tif", tmp_path / "out.tif", SegmentOptions(runtime="torch"))
    finally:
        server.close()


def test_the_options_go_to_rasterios_gdal_not_another_wheels():
    """pyogrio's wheel brings a libgdal of its own: options set there would never reach rasterio's reads (an
    s3:// input after a run that wrote polygons went to the bucket's AWS host instead of the endpoint)."""
    import subprocess
    import sys

    code = (
        "import rasterio, rasterio._env\n"
        "import pyogrio, pyogrio.raw\n"  # pyogrio's GDAL mapped after rasterio's: listed first in /proc/self/maps
        "from tileseg.engine.io import gdalconfig\n"
        "gdalconfig.set_option('TILESEG_PROBE', 'here')\n"
        "from rasterio.env import get_gdal_config\n"
        "print(get_gdal_config('TILESEG_PROBE'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "here", "the option was set in another GDAL than rasterio's"
