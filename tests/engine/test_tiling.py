"""Tile settings and plans: refusals that name what would work, and cores that cover the image once."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tileseg.engine.errors import TileGeometryError
from tileseg.engine.tiling import MAX_TILE, TilePlan, TileSettings, parse_blend
from tileseg.models.spec import BlendMode, Geometry

UNET = Geometry(halo=92, multiple=16, offset=4, shrink=92)  # the U-Net paper's valid-convolution network
PADDED = Geometry(halo=8, multiple=4)


def test_the_unet_papers_tile():
    settings = TileSettings(UNET, core=384)
    assert (settings.output_size, settings.window) == (388, 572)  # the paper's 572 -> 388
    assert settings.margin == 0 and settings.step == 384


@pytest.mark.parametrize("core,nearest", [(388, [384, 400]), (17, [16, 32]), (5, [16])])
def test_a_core_off_the_stride_names_the_nearest_valid_cores(core, nearest):
    with pytest.raises(TileGeometryError, match="multiple of its stride 16") as caught:
        TileSettings(UNET, core=core)
    named = [int(n) for n in re.search(r"nearest valid: ([\d, ]+)$", str(caught.value)).group(1).split(", ")]
    assert named == nearest
    for valid in named:
        assert TileSettings(UNET, core=valid).core == valid


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"core": 0}, "out of range"),
        ({"core": MAX_TILE + 4}, "out of range"),
        ({"core": 32, "overlap": 0.25}, "blended modes only"),
        ({"core": 32, "blend": "gaussian", "overlap": 1.0}, "0 <= overlap < 1"),
        ({"core": 32, "blend": "gaussian", "overlap": -0.1}, "0 <= overlap < 1"),
        ({"core": 32, "blend": "gaussian", "overlap": 0.9}, "no step between windows"),
        ({"core": 32, "batch": 0}, "batch 0"),
        ({"core": 32, "blend": "gausian"}, "valid: crop, gaussian, cosine"),
    ],
)
def test_settings_refuse_what_breaks_the_geometry(kwargs, message):
    with pytest.raises(TileGeometryError, match=message):
        TileSettings(PADDED, **kwargs)


def test_the_largest_overlap_named_in_a_refusal_is_accepted():
    with pytest.raises(TileGeometryError) as caught:
        TileSettings(PADDED, core=32, blend="gaussian", overlap=0.9)
    most = float(re.search(r"give at most ([\d.]+)", str(caught.value)).group(1))
    settings = TileSettings(PADDED, core=32, blend="gaussian", overlap=most)
    assert settings.step == PADDED.multiple


def test_tile_errors_are_value_errors():
    with pytest.raises(ValueError):
        TileSettings(PADDED, core=3)


def test_blend_modes_parse_from_their_names():
    assert parse_blend("cosine") is BlendMode.COSINE
    assert parse_blend(BlendMode.GAUSSIAN) is BlendMode.GAUSSIAN
    assert TileSettings(PADDED, core=8, blend="gaussian").blend is BlendMode.GAUSSIAN


def test_blended_steps_shrink_by_the_overlap_on_the_stride_grid():
    crop = TileSettings(PADDED, core=32)
    assert crop.step == 32
    assert TileSettings(PADDED, core=32, blend="cosine").step == 32  # no overlap: windows meet at the cores
    overlapped = TileSettings(PADDED, core=32, blend="cosine", overlap=0.25)
    # the window is 48 px: a quarter of it (12 px) comes off the core, leaving 20, already on the stride grid
    assert overlapped.window == 48 and overlapped.step == 20
    assert TileSettings(PADDED, core=32, blend="cosine", overlap=0.3).step == 16  # 32 - 15 = 17, down to 16


SIZES = [(25, 13), (1, 1), (64, 64), (37, 53), (3, 90)]
SETTINGS = {
    "crop": TileSettings(PADDED, core=12),
    "blended": TileSettings(PADDED, core=12, blend="gaussian", overlap=0.2),
    "valid": TileSettings(Geometry(halo=44, multiple=8, offset=4, shrink=44), core=16),
}


@pytest.mark.parametrize("name", SETTINGS)
@pytest.mark.parametrize("size", SIZES)
def test_plan_covers_the_image_exactly_once_in_row_major_order(name, size):
    settings = SETTINGS[name]
    plan = TilePlan(settings, *size)
    cover = np.zeros(size, int)
    tiles = list(plan)
    for position, tile in enumerate(tiles):
        assert tile.index == position == tile.row * plan.cols + tile.col
        assert (tile.y, tile.x) == (tile.row * settings.step, tile.col * settings.step)
        assert tile.y % settings.geometry.multiple == 0 and tile.x % settings.geometry.multiple == 0
        assert 0 < tile.height <= settings.step and 0 < tile.width <= settings.step
        cover[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] += 1
    assert (cover == 1).all()
    assert len(plan) == len(tiles) == plan.rows * plan.cols


def test_plan_counts_tiles_per_row_and_column():
    plan = TilePlan(TileSettings(PADDED, core=12), 25, 13)
    assert (plan.rows, plan.cols, len(plan)) == (3, 2, 6)
    last = list(plan)[-1]
    assert (last.height, last.width) == (1, 1)  # 25 = 2 * 12 + 1 and 13 = 12 + 1: the edge cores are cut


@pytest.mark.parametrize("geometry", [PADDED, UNET, Geometry(halo=44, multiple=8, offset=4, shrink=44)])
def test_a_window_is_centred_on_its_core(geometry):
    """Output pixel j lies over input pixel j + shrink, and a core starts ``margin`` pixels into the output:
    the window's origin, moved by both, must land on the core's first pixel."""
    settings = TileSettings(geometry, core=2 * geometry.multiple)
    plan = TilePlan(settings, 100, 70)
    for tile in plan:
        row, col = plan.window_origin(tile)
        assert (row + geometry.shrink + settings.margin, col + geometry.shrink + settings.margin) == (tile.y, tile.x)
    assert settings.output_size >= settings.core + 2 * settings.margin
    assert settings.window == geometry.input_length(settings.output_size)
    assert settings.output_size % geometry.multiple == geometry.offset  # an output length the network gives
