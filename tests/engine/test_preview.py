"""The preview: a small RGBA picture of a mask in its card's colours, nodata transparent."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from PIL import Image

from tests.conftest import write_raster
from tileseg.engine.views.preview import render_preview

COLOURS = {0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 3: (0, 0, 255, 255)}
NODATA = 255


def mask_file(path, classes: np.ndarray, colours: dict | None = COLOURS, nodata: int | None = NODATA):
    """A uint8 mask GeoTIFF as the engine writes it: a colour table and nodata, unless told otherwise."""
    write_raster(path, classes[None].astype(np.uint8), **({"nodata": nodata} if nodata is not None else {}))
    if colours:
        with rasterio.open(path, "r+") as dst:
            dst.write_colormap(1, colours)
    return path


def read_png(path) -> np.ndarray:
    with Image.open(path) as picture:
        assert picture.mode == "RGBA" and picture.format == "PNG"
        return np.asarray(picture)


def test_classes_in_their_colours_and_nodata_transparent(tmp_path):
    classes = np.random.default_rng(0).integers(0, 4, (40, 60))
    classes[:5] = NODATA  # a nodata border along the top
    # an opaque colour for the nodata value too: transparency must come from nodata, not from the table
    mask = mask_file(tmp_path / "mask.tif", classes, colours={**COLOURS, NODATA: (255, 255, 255, 255)})
    out = render_preview(mask, tmp_path / "preview.png")
    assert out == tmp_path / "preview.png"
    rgba = read_png(out)
    assert rgba.shape == (40, 60, 4)  # smaller than the preview's side: not enlarged
    for index, colour in COLOURS.items():
        assert (rgba[classes == index] == colour).all()
    assert (rgba[classes == NODATA] == 0).all()  # transparent, and no colour left behind


def test_the_longest_side_is_scaled_to_the_preview_side(tmp_path):
    classes = np.zeros((100, 40), np.uint8)
    classes[:, 20:] = 2  # right half
    rgba = read_png(render_preview(mask_file(tmp_path / "tall.tif", classes), tmp_path / "tall.png", side=50))
    assert rgba.shape[:2] == (50, 20)
    assert (rgba[:, :10] == COLOURS[0]).all() and (rgba[:, 10:] == COLOURS[2]).all()


@pytest.mark.parametrize("side", [7, 16])
def test_decimation_keeps_class_indices(tmp_path, side):
    """Nearest-neighbour reads: a shrunken preview of classes 0 and 3 shows only their greys; an averaging
    read would invent classes 1 and 2 between them. (Without a colour table: with one, GDAL maps an average
    back onto the table's colours and would hide the mistake.)"""
    classes = np.random.default_rng(1).choice([0, 3], (64, 64))
    mask = mask_file(tmp_path / "mask.tif", classes, colours=None, nodata=None)
    rgba = read_png(render_preview(mask, tmp_path / "small.png", side=side))
    assert rgba.shape[:2] == (side, side)
    assert set(np.unique(rgba[..., 0])) <= {0, 255}  # the ends of the grey ramp over classes 0..3


def test_without_a_colour_table_classes_are_greys(tmp_path):
    classes = np.array([[0, 1], [2, 2]])
    rgba = read_png(
        render_preview(mask_file(tmp_path / "grey.tif", classes, colours=None, nodata=None), tmp_path / "grey.png")
    )
    np.testing.assert_array_equal(rgba[..., 3], 255)
    np.testing.assert_array_equal(rgba[..., 0], [[0, 127], [255, 255]])  # a ramp from black to white
    assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()


def test_the_picture_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    mask = mask_file(tmp_path / "mask.tif", np.zeros((8, 8), np.uint8))
    render_preview(mask, tmp_path / "preview.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif", "preview.png"]  # no temporary left

    def save_half(self, fp, *args, **kwargs):
        with open(fp, "wb") as half:
            half.write(b"\x89PNG")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", save_half)
    with pytest.raises(OSError, match="disk full"):
        render_preview(mask, tmp_path / "failed.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif", "preview.png"]
