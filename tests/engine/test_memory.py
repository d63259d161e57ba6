"""Peak memory follows the tile and batch size, not the image: a 16x larger raster costs about the same."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from tests.conftest import REPO
from tests.engine.nets import checkpoint

CHILD = textwrap.dedent("""
    import sys
    from tileseg import models
    from tileseg.engine.runtime.device import process_peak
    import tests.engine.nets
    tests.engine.nets.register()
    from tileseg.engine import SegmentOptions, segment
    model = models.load(sys.argv[1])
    segment(model, sys.argv[2], sys.argv[3], SegmentOptions(tile=256, batch=4))
    print(process_peak() // 2**20)  # ru_maxrss would miss what came before the tuner's last measurement
""")


def mosaic(source, target, times: int = 4) -> None:
    """A real scene mirrored into a ``times`` x ``times`` mosaic, tiled and compressed, with its CRS."""
    with rasterio.open(source) as src:
        data = src.read()
        profile = {
            **src.profile,
            "width": src.width * times,
            "height": src.height * times,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
        }
        with rasterio.open(target, "w", **profile) as dst:
            for i in range(times):
                for j in range(times):
                    block = data[:, :: (-1) ** i, :: (-1) ** j]
                    dst.write(block, window=Window(j * src.width, i * src.height, src.width, src.height))


def peak_mb(model_path, source, output) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_path), str(source), str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        cwd=REPO,
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_image(tmp_path, data_dir):
    model = checkpoint(tmp_path, "test-pool", bands=3, classes=6, name="mem-test")
    small = data_dir / "geotiff" / "RGB.byte.tif"
    big = tmp_path / "rgb_x16.tif"
    mosaic(small, big)
    with rasterio.open(small) as s, rasterio.open(big) as b:
        assert b.width * b.height == 16 * s.width * s.height
    small_mb = peak_mb(model.checkpoint_path, small, tmp_path / "small.tif")
    big_mb = peak_mb(model.checkpoint_path, big, tmp_path / "big.tif")
    assert big_mb - small_mb < 150, f"peak RSS {small_mb} MB on the scene, {big_mb} MB on 16x the scene"
    with rasterio.open(tmp_path / "big.tif") as out, rasterio.open(tmp_path / "small.tif") as ref:
        np.testing.assert_array_equal(out.read(1, window=Window(0, 0, ref.width, ref.height)), ref.read(1))


def test_the_process_peak_keeps_what_came_before_the_tuners_resets():
    """The tuner resets the resident set's high-water mark to measure each point: ru_maxrss (and /usr/bin/time)
    then miss any earlier peak, and process_peak() does not."""
    from tileseg.engine.runtime.device import PeakMemory, _status_bytes, process_peak
    from tileseg.engine.runtime.memory import release_free_memory

    big = np.ones(400 << 20, np.uint8)  # 400 MB held, then handed back
    held = int(big[::4096].sum())
    del big
    release_free_memory()
    with PeakMemory(torch.device("cpu")) as peak:
        pass
    assert held and peak.bytes is not None, "the high-water mark can be reset here (Linux)"
    high, kept = _status_bytes("VmHWM"), process_peak()
    assert high is not None and kept is not None and kept - high > 300 << 20, (high, kept)


def test_free_heap_pages_are_handed_back():
    """On glibc the engine hands free heap pages back once a tile row (service/engine/runtime/memory.py)."""
    from tileseg.engine.runtime.memory import release_free_memory

    assert release_free_memory() is True
