"""Every reader implements the :class:`~tileseg.engine.io.RasterSource` contract, on real instances."""

from __future__ import annotations

import numpy as np
import pytest

from tests.engine.nets import checkpoint
from tileseg.engine.io import ArrayRaster, InputRaster, RasterSource
from tileseg.engine.io.resample import ResampledRaster
from tileseg.engine.io.slide import SlideRaster
from tileseg.engine.roi import Roi


@pytest.fixture
def rgb(tmp_path):
    return checkpoint(tmp_path, "test-pool", bands=3, classes=2, name="rgb")


@pytest.fixture
def readers(data_dir, rgb):
    """One real instance of each reader class."""
    with InputRaster(data_dir / "geotiff" / "RGB.byte.tif", rgb.spec) as raster:
        with SlideRaster(data_dir / "wsi" / "small.svs", rgb.spec) as slide:
            array = ArrayRaster(np.zeros((3, 20, 30), np.uint8), rgb.spec)
            roi = Roi(np.ones((4, 4), bool), "auto")
            yield [raster, slide, array, ResampledRaster(raster, 40, 50), roi.restrict(array)]


def test_every_reader_is_a_raster_source(readers):
    names = sorted(type(r).__name__ for r in readers)
    assert names == ["ArrayRaster", "InputRaster", "ResampledRaster", "RoiRaster", "SlideRaster"]
    for reader in readers:
        assert isinstance(reader, RasterSource), type(reader).__name__
        window = reader.read_window(0, 0, 8)
        assert window.shape[1:] == (8, 8) and reader.read_region(0, 0, 2, 3).shape[1:] == (2, 3)
        valid = reader.read_valid(0, 0, 2, 3)
        assert valid is None or valid.shape == (2, 3)
        assert reader.levels[0] >= (1, 1) and reader.info.name
