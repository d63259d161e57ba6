"""An image in memory reads as the same image in a file does: the same windows, mirror padding and scaling."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import write_raster
from tileseg.engine.errors import BandMismatchError, DtypeError
from tileseg.engine.io import ArrayRaster, InputRaster
from tileseg.models.spec import ClassInfo, Geometry, InputSpec, ModelSpec

SPEC = ModelSpec(
    name="two-band",
    arch="test",
    input=InputSpec(bands=2, mean=(0.4, 0.6), std=(0.2, 0.3)),
    classes=(ClassInfo(0, "a", "#000000"), ClassInfo(1, "b", "#ffffff")),
    geometry=Geometry(8, 4),
)


def test_windows_and_scaling_equal_those_of_the_same_image_in_a_file(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (2, 37, 23), dtype=np.uint8)
    array = ArrayRaster(image, SPEC)
    with InputRaster(write_raster(tmp_path / "image.tif", image), SPEC) as file:
        assert (array.height, array.width) == (file.height, file.width) == (37, 23)
        for field in ("low", "high", "a", "b", "clip"):
            np.testing.assert_array_equal(getattr(array.scaling, field), getattr(file.scaling, field))
        # inside, across each border, and a window larger than the image (mirrored more than once)
        for row, col, length in ((4, 3, 16), (-8, -8, 16), (30, 15, 16), (-40, -50, 120)):
            window = array.read_window(row, col, length)
            assert window.dtype == np.uint8 and window.shape == (2, length, length)
            np.testing.assert_array_equal(window, file.read_window(row, col, length))
        assert array.read_valid(0, 0, 37, 23) is None and file.read_valid(0, 0, 37, 23) is None


def test_a_window_is_a_copy():
    image = np.zeros((2, 8, 8), dtype=np.uint8)
    ArrayRaster(image, SPEC).read_window(0, 0, 8)[:] = 1
    assert not image.any()


def test_images_that_do_not_fit_the_model_are_refused():
    with pytest.raises(DtypeError, match="uint8"):
        ArrayRaster(np.zeros((2, 8, 8), dtype=np.uint16), SPEC)
    with pytest.raises(BandMismatchError, match="2 band"):
        ArrayRaster(np.zeros((3, 8, 8), dtype=np.uint8), SPEC)
    with pytest.raises(BandMismatchError):
        ArrayRaster(np.zeros((8, 8), dtype=np.uint8), SPEC)
