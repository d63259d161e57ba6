"""Every reader implements the :class:`~tileseg.engine.io.RasterSource` contract, on real instances."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from tests.engine.nets import checkpoint
from tileseg.engine.io import ArrayRaster, InputRaster, RasterSource
from tileseg.engine.io.inputs import open_input
from tileseg.engine.io.resample import ResampledRaster
from tileseg.engine.io.slide import SlideRaster
from tileseg.engine.io.zarr_raster import ZarrRaster
from tileseg.engine.roi import Roi


@pytest.fixture
def rgb(tmp_path):
    return checkpoint(tmp_path, "test-pool", bands=3, classes=2, name="rgb")


@pytest.fixture
def stack(tmp_path, rgb):
    """A STAC item of three single-band assets, stacked by their common names."""
    assets = {}
    for i, name in enumerate(("red", "green", "blue")):
        with rasterio.open(
            tmp_path / f"{name}.tif", "w", driver="GTiff", width=30, height=20, count=1, dtype="uint8"
        ) as dst:
            dst.write(np.full((1, 20, 30), 40 * i, np.uint8))
        assets[name] = {"href": f"{name}.tif", "eo:bands": [{"common_name": name}]}
    (tmp_path / "item.json").write_text(json.dumps({"type": "Feature", "id": "x", "assets": assets}))
    with open_input(tmp_path / "item.json", rgb.spec, ("red", "green", "blue")) as stacked:
        yield stacked


@pytest.fixture
def zarr_array(tmp_path, rgb):
    """A Zarr v3 array of three bands, written by zarr-python."""
    import zarr

    zarr.create_array(tmp_path / "scene.zarr", shape=(3, 20, 30), chunks=(3, 8, 8), dtype="uint8")[:] = 7
    with ZarrRaster(tmp_path / "scene.zarr", rgb.spec) as raster:
        yield raster


@pytest.fixture
def readers(data_dir, rgb, stack, zarr_array):
    """One real instance of each reader class."""
    with InputRaster(data_dir / "geotiff" / "RGB.byte.tif", rgb.spec) as raster:
        with SlideRaster(data_dir / "wsi" / "small.svs", rgb.spec) as slide:
            array = ArrayRaster(np.zeros((3, 20, 30), np.uint8), rgb.spec)
            roi = Roi(np.ones((4, 4), bool), "auto")
            yield [raster, slide, array, ResampledRaster(raster, 40, 50), roi.restrict(array), stack, zarr_array]


def test_every_reader_is_a_raster_source(readers):
    names = sorted(type(r).__name__ for r in readers)
    assert names == [
        "ArrayRaster",
        "InputRaster",
        "ResampledRaster",
        "RoiRaster",
        "SlideRaster",
        "StackedRaster",
        "ZarrRaster",
    ]
    for reader in readers:
        assert isinstance(reader, RasterSource), type(reader).__name__
        window = reader.read_window(0, 0, 8)
        assert window.shape[1:] == (8, 8) and reader.read_region(0, 0, 2, 3).shape[1:] == (2, 3)
        valid = reader.read_valid(0, 0, 2, 3)
        assert valid is None or valid.shape == (2, 3)
        assert reader.levels[0] >= (1, 1) and reader.info.name
        # a window over the top-left corner: mirrored (reflect) and C-contiguous, which the runtimes take as it is
        corner = reader.read_window(-3, -5, 16)
        region = reader.read_region(0, 0, 16 - 3 + 1, 16 - 5 + 1)
        expected = np.pad(region, ((0, 0), (3, 0), (5, 0)), mode="reflect")[:, :16, :16]
        np.testing.assert_array_equal(corner, expected.astype(corner.dtype))
        assert corner.flags["C_CONTIGUOUS"], type(reader).__name__


def test_the_thread_reading_in_turn_decodes_with_many_threads_readers_ahead_with_one(tmp_path, data_dir, monkeypatch):
    import threading

    from tileseg.engine.io import read

    rgb = checkpoint(tmp_path, "test-pool", bands=3, classes=2)
    opened: list[int] = []
    real = read.open_raster

    def recording(path, overview=None, drivers=None, threads=1):
        opened.append(threads)
        return real(path, overview, drivers, threads)

    monkeypatch.setattr(read, "open_raster", recording)
    with rasterio.open(data_dir / "geotiff" / "RGB.byte.tif") as src:  # a real scene, as DEFLATE tiles of 64²
        profile = {**src.profile, "tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate"}
        image = tmp_path / "tiled.tif"
        with rasterio.open(image, "w", **profile) as dst:
            dst.write(src.read())
    with InputRaster(image, rgb.spec, decode_threads=2) as raster:
        in_turn = raster.read_window(40, 60, 300)
        ahead: list[np.ndarray] = []
        reader = threading.Thread(target=lambda: ahead.append(raster.read_window(40, 60, 300)))
        reader.start()
        reader.join()
    assert 2 in opened and opened[-1] == 1  # the owner's dataset decodes with 2 threads, the reader's with 1
    with InputRaster(image, rgb.spec) as raster:
        single = raster.read_window(40, 60, 300)
    np.testing.assert_array_equal(in_turn, single)
    np.testing.assert_array_equal(ahead[0], single)
