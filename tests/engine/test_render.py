"""The viewer's tiles (tileseg.engine.views.render): each tile's pixels are a window of the mask, resampled.

Known answers, computed here independently of GDAL's warper: a Deep Zoom tile is a window of the mask
sampled at its pixel centres; an XYZ tile of a mask on the web-mercator tile grid is exactly a window of it;
an XYZ tile of a UTM mask matches, pixel by pixel, the class found by projecting each tile pixel's centre
into the mask's CRS.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import rowcol
from rasterio.warp import transform as warp_points

from tileseg.engine.views.render import (
    TILE,
    BadTileError,
    TileNotFoundError,
    add_overviews,
    deepzoom_window,
    pyramid,
    render_tile,
    write_view,
    xyz_transform,
)

COLOURS = {0: (255, 0, 0, 255), 1: (0, 128, 0, 255), 2: (0, 0, 255, 255), 3: (250, 250, 0, 255)}
NODATA = 255


def _palette() -> np.ndarray:
    palette = np.zeros((256, 4), np.uint8)
    for index, colour in COLOURS.items():
        palette[index] = colour
    return palette


def write_mask(path, classes: np.ndarray, crs=None, transform=None, overviews: bool = False):
    """A mask GeoTIFF as the engine writes one: uint8 classes, nodata 255, a colour table."""
    profile = {"driver": "GTiff", "width": classes.shape[1], "height": classes.shape[0], "count": 1}
    profile.update(dtype="uint8", nodata=NODATA, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes, 1)
        dst.write_colormap(1, COLOURS)
    if overviews:
        add_overviews(path)
    return path


def tile_pixels(path, layer, z, x, y, hidden=()) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(render_tile(path, layer, z, x, y, hidden))))


@pytest.fixture
def classes() -> np.ndarray:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, size=(700, 1000), dtype=np.uint8)
    mask[:40, :60] = NODATA
    return mask


def test_deepzoom_window_maths():
    # 1000 x 700: the full resolution is level ceil(log2(1000)) = 10
    assert deepzoom_window(1000, 700, 10, 3, 2) == ((rasterio.windows.Window(768, 512, 232, 188)), (188, 232))
    # level 9 halves it: tile (1, 1) covers columns 512..999 and rows 512..699 of the full image
    assert deepzoom_window(1000, 700, 9, 1, 1) == ((rasterio.windows.Window(512, 512, 488, 188)), (94, 244))
    assert deepzoom_window(1000, 700, 0, 0, 0)[1] == (1, 1)
    with pytest.raises(TileNotFoundError):
        deepzoom_window(1000, 700, 10, 4, 0)
    with pytest.raises(TileNotFoundError):
        deepzoom_window(1000, 700, 9, 0, 2)
    for bad in ((11, 0, 0), (-1, 0, 0), (10, -1, 0), (10, 0, -3)):
        with pytest.raises(BadTileError):
            deepzoom_window(1000, 700, *bad)


def test_deepzoom_tiles_are_windows_of_the_mask(tmp_path, classes):
    path = write_mask(tmp_path / "mask.tif", classes)
    assert pyramid(path).to_dict() == {
        "kind": "deepzoom", "width": 1000, "height": 700, "tile_size": TILE, "min_zoom": 0, "max_zoom": 10,
        "bounds": None,
    }  # fmt: skip
    expected = _palette()[classes]
    expected[classes == NODATA] = 0
    tile = tile_pixels(path, "mask", 10, 3, 2)
    assert tile.shape == (188, 232, 4)
    np.testing.assert_array_equal(tile, expected[512:700, 768:1000])
    # one level down: the window sampled at the tile pixels' centres (every second pixel, from the second)
    np.testing.assert_array_equal(tile_pixels(path, "mask", 9, 0, 0), expected[1:512:2, 1:512:2])
    assert tile_pixels(path, "mask", 10, 0, 0)[:40, :60, 3].max() == 0, "nodata is transparent"


def test_hidden_classes_are_transparent(tmp_path, classes):
    path = write_mask(tmp_path / "mask.tif", classes)
    tile = tile_pixels(path, "mask", 10, 1, 1, hidden=(2, 3))
    window = classes[256:512, 256:512]
    assert (tile[..., 3][np.isin(window, [2, 3])] == 0).all()
    np.testing.assert_array_equal(tile[np.isin(window, [0, 1])], _palette()[window[np.isin(window, [0, 1])]])


def test_xyz_tiles_on_the_tile_grid_are_windows_of_the_mask(tmp_path, classes):
    # a mask in EPSG:3857 whose pixels are those of zoom 12, its corner on tile (1200, 1500)
    origin = xyz_transform(12, 1200, 1500)
    path = write_mask(tmp_path / "mask.tif", classes[:512, :768], CRS.from_epsg(3857), origin, overviews=True)
    info = pyramid(path)
    assert info.kind == "xyz" and info.max_zoom == 12 and info.min_zoom == 10
    expected = _palette()[classes[:512, :768]]
    expected[classes[:512, :768] == NODATA] = 0
    np.testing.assert_array_equal(tile_pixels(path, "mask", 12, 1201, 1501), expected[256:512, 256:512])
    # zoom 11: every second pixel of the mask (read from its nearest-neighbour overview)
    np.testing.assert_array_equal(tile_pixels(path, "mask", 11, 600, 750), expected[:512:2, :512:2])
    # tile 601 holds the mask's last 256 columns in its left half, and nothing past the mask's edge
    zoomed_out = tile_pixels(path, "mask", 11, 601, 750)
    np.testing.assert_array_equal(zoomed_out[:, :128], expected[:512:2, 512::2])
    assert zoomed_out[:, 128:, 3].max() == 0, "past the mask's edge the tile is transparent"
    with pytest.raises(TileNotFoundError):
        render_tile(path, "mask", 12, 1100, 1500)
    for bad in ((25, 0, 0), (-1, 0, 0), (3, 8, 0), (3, 0, -1)):
        with pytest.raises(BadTileError):
            render_tile(path, "mask", *bad)


def test_reprojected_xyz_tile_matches_the_mask_pixel_by_pixel(tmp_path, data_dir):
    """A UTM mask (RGB.byte.tif's grid): each tile pixel has the class under its centre."""
    with rasterio.open(data_dir / "geotiff" / "RGB.byte.tif") as src:
        crs, transform, shape = src.crs, src.transform, (src.height, src.width)
    blocks = (np.add.outer(np.arange(shape[0]) // 37, np.arange(shape[1]) // 53) % 4).astype(np.uint8)
    path = write_mask(tmp_path / "utm.tif", blocks, crs, transform)
    z, x, y = 9, 145, 219  # inside the scene, at the mask's own resolution
    tile = tile_pixels(path, "mask", z, x, y)
    t = xyz_transform(z, x, y)
    cols, rows = np.meshgrid(np.arange(TILE) + 0.5, np.arange(TILE) + 0.5)
    xs, ys = t * (cols.ravel(), rows.ravel())
    ux, uy = warp_points("EPSG:3857", crs, xs, ys)
    r, c = rowcol(transform, ux, uy)
    r, c = np.asarray(r), np.asarray(c)
    inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    expected = np.zeros((TILE * TILE, 4), np.uint8)
    expected[inside] = _palette()[blocks[r[inside], c[inside]]]
    agree = (tile.reshape(-1, 4) == expected).all(axis=1).mean()
    assert agree > 0.98, f"only {agree:.3f} of the tile's pixels hold the class under their centre"


def test_view_copy_of_a_16_bit_input(tmp_path, data_dir):
    source = data_dir / "geotiff" / "spacenet_atlanta_pan_uint16.tif"
    view = write_view(source, tmp_path / "view.tif")
    with rasterio.open(source) as src, rasterio.open(view) as dst:
        assert (dst.count, dst.dtypes[0], dst.crs, dst.transform) == (2, "uint8", src.crs, src.transform)
        assert dst.overviews(1) == [2, 4]
        data, alpha = dst.read(1), dst.read(2)
        valid = src.dataset_mask() > 0
        np.testing.assert_array_equal(alpha > 0, valid)
        values = src.read(1)[valid]
        low, high = np.percentile(values, [2, 98])
        assert data[valid].min() == 0 and data[valid].max() == 255
        # stretched linearly: a pixel in the middle of the range is in the middle of 0..255
        middle = np.argmin(np.abs(src.read(1) - (low + high) / 2) + ~valid * 1e9)
        assert abs(int(data.ravel()[middle]) - 127) <= 2
    tile = tile_pixels(view, "input", 18, 69554, 105033)
    assert tile.shape == (TILE, TILE, 4) and tile[..., 3].max() == 255


def test_view_copy_of_an_rgb_png_is_the_image(tmp_path, data_dir):
    source = data_dir / "dubai_aerial" / "tile1" / "images"
    image = sorted(source.iterdir())[0]
    view = write_view(image, tmp_path / "view.tif")
    with rasterio.open(image) as src, rasterio.open(view) as dst:
        np.testing.assert_array_equal(dst.read((1, 2, 3)), src.read((1, 2, 3)))
        assert (dst.read(4) == 255).all()
    top = pyramid(view).max_zoom
    tile = tile_pixels(view, "input", top, 0, 0)
    with rasterio.open(image) as src:
        np.testing.assert_array_equal(tile[..., :3], src.read((1, 2, 3))[:, :256, :256].transpose(1, 2, 0))
