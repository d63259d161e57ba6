"""The overlap-tile engine: exact seams, mirror padding, streaming, nodata, blended modes."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import rasterio
import torch

from tests.engine.nets import checkpoint
from tileseg.engine import SegmentOptions, predict_strips, segment, tile_settings
from tileseg.engine.batches import BatchRunner
from tileseg.engine.io import InputRaster
from tileseg.models.spec import BlendMode


def reference_logits(model, path) -> np.ndarray:
    """The whole image, mirror-padded by the halo (numpy's reflect), run once, cropped: what tiling must equal."""
    g = model.spec.geometry
    with rasterio.open(path) as src:
        image = src.read().astype(np.float32) / 255
    _, height, width = image.shape
    margin = g.halo - g.shrink
    size_h = g.input_length(g.window_output(height + 2 * margin))
    size_w = g.input_length(g.window_output(width + 2 * margin))
    padded = np.pad(
        image, ((0, 0), (g.halo, size_h - height - g.halo), (g.halo, size_w - width - g.halo)), mode="reflect"
    )
    with torch.inference_mode():
        logits = model(torch.from_numpy(padded)[None])[0].numpy()
    return logits[:, margin : margin + height, margin : margin + width]


def tiled_logits(model, path, tile: int, batch: int = 3) -> np.ndarray:
    settings = tile_settings(model.spec, SegmentOptions(tile=tile, batch=batch))
    with InputRaster(path, model.spec) as src:
        runner = BatchRunner(model, settings, src.scaling, torch.device("cpu"), logits=True)
        strips = list(predict_strips(runner, src))
    return np.concatenate([s.probabilities for s in strips], axis=1)


def read_mask(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


SIZES = [(37, 53), (64, 64), (5, 29), (1, 40), (40, 1), (3, 3)]


@pytest.mark.parametrize("arch,tiles", [("test-pool", [4, 8, 20, 64]), ("test-valid", [8, 16, 40])])
@pytest.mark.parametrize("size", SIZES)
def test_tiled_equals_whole_image(tmp_path, raster_factory, arch, tiles, size):
    model = checkpoint(tmp_path, arch, bands=2, classes=3)
    path = raster_factory(*size, bands=2)
    expected = reference_logits(model, path)
    for tile in tiles:
        got = tiled_logits(model, path, tile)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0, err_msg=f"tile {tile}")
    out = tmp_path / "mask.tif"
    segment(model, path, out, SegmentOptions(tile=tiles[1], batch=2, precision="fp32"))
    np.testing.assert_array_equal(read_mask(out), expected.argmax(0))


def test_a_misaligned_grid_would_not_be_exact(tmp_path, raster_factory):
    """The check above can fail: starting tiles off the stride grid changes the pooled features."""
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3)
    path = raster_factory(48, 48)
    expected = reference_logits(model, path)
    with rasterio.open(path) as src:
        image = src.read().astype(np.float32) / 255
    shifted = np.pad(image, ((0, 0), (18, 18), (18, 18)), mode="reflect")  # origin 2 px off the stride-4 grid
    with torch.inference_mode():
        got = model(torch.from_numpy(shifted)[None])[0].numpy()[:, 2:50, 2:50]
    assert np.abs(got - expected).max() > 1e-3


@pytest.mark.parametrize("shrink,offset,multiple", [(0, 0, 4), (4, 2, 4), (6, 0, 8)])
@pytest.mark.parametrize("size", [(20, 7), (1, 1), (33, 50), (7, 20)])
def test_mirror_padding_known_answer(tmp_path, raster_factory, shrink, offset, multiple, size):
    """Each output pixel is the input pixel (3, -5) away: the mask must be the reflect-padded input, shifted,
    even where the pad is larger than the image."""
    model = checkpoint(
        tmp_path, "test-shift", bands=1, classes=8, halo=8, multiple=multiple, offset=offset, shrink=shrink
    )
    path = raster_factory(*size, high=8)
    with rasterio.open(path) as src:
        image = src.read(1)
    padded = np.pad(image, 8, mode="reflect")
    h, w = size
    expected = padded[8 + 3 : 8 + 3 + h, 8 - 5 : 8 - 5 + w]
    for tile in (multiple, 2 * multiple, 64):
        out = tmp_path / f"mask{tile}.tif"
        segment(model, path, out, SegmentOptions(tile=tile, batch=3))
        np.testing.assert_array_equal(read_mask(out), expected, err_msg=f"tile {tile}")


def test_blended_modes_reproduce_a_pointwise_net(tmp_path, raster_factory):
    """Blending averages windows; for a net without context every window agrees, so the result is exact."""
    model = checkpoint(tmp_path, "test-shift", bands=1, classes=8, dy=0, dx=0, halo=8, multiple=4)
    path = raster_factory(45, 71, high=8)
    image = read_mask(path)
    for blend in ("gaussian", "cosine"):
        for overlap in (0.0, 0.25, 0.5):
            out = tmp_path / f"{blend}{overlap}.tif"
            probs = tmp_path / f"{blend}{overlap}.probs.tif"
            segment(model, path, out, SegmentOptions(tile=32, blend=blend, overlap=overlap), probabilities=probs)
            np.testing.assert_array_equal(read_mask(out), image)
            with rasterio.open(probs) as src:
                p = src.read()
            assert p.shape == (8, 45, 71)
            assert np.abs(p.astype(int).sum(0) - 255).max() <= 4  # probabilities sum to one (uint8-rounded)


def test_blend_stays_close_to_whole_image_for_a_conv_net(tmp_path, raster_factory):
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3)
    path = raster_factory(70, 90)
    expected = reference_logits(model, path).argmax(0)
    out = tmp_path / "blend.tif"
    segment(model, path, out, SegmentOptions(tile=16, blend="gaussian", overlap=0.25))
    assert (read_mask(out) == expected).mean() > 0.99  # the halo covers the receptive field: near-exact


def test_progress_and_cancel(tmp_path, raster_factory):
    from tileseg.engine.errors import CanceledError

    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3)
    path = raster_factory(64, 64)
    seen = []
    out = tmp_path / "mask.tif"
    result = segment(model, path, out, SegmentOptions(tile=16, batch=2), progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (16, 16) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert result.tiles_total == 16

    def cancel(done, total):
        if done >= 4:
            raise CanceledError("stop")

    out2 = tmp_path / "canceled.tif"
    with pytest.raises(CanceledError):
        segment(model, path, out2, SegmentOptions(tile=16, batch=2), progress=cancel)
    assert not out2.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_default_core_is_evened_out_over_the_image(tmp_path, raster_factory):
    """Without --tile, a 70-pixel side takes three 24-pixel cores rather than three of 32 (the default):
    less work, the same exact result."""
    model = checkpoint(tmp_path, "test-valid", bands=1, classes=3)  # default tile 32, stride 8
    spec = model.spec
    assert tile_settings(spec, SegmentOptions()).core == 32
    assert tile_settings(spec, SegmentOptions(), (100, 40)).core == 32
    assert tile_settings(spec, SegmentOptions(), (70, 40)).core == 24  # ceil(70 / 3) = 24: three cores
    assert tile_settings(spec, SegmentOptions(tile=32), (70, 40)).core == 32  # an explicit tile is kept
    # a transformer keeps its default core: its window stays the size it was trained on
    blended = replace(spec, geometry=replace(spec.geometry, equivariant=False, blend=BlendMode.GAUSSIAN))
    assert tile_settings(blended, SegmentOptions(), (70, 40)).core == 32
    path = raster_factory(70, 40)
    out = tmp_path / "mask.tif"
    result = segment(model, path, out, SegmentOptions(runtime="torch", precision="fp32", batch=4))
    tile = result.runtime.tile
    assert result.tiles_total == math.ceil(70 / tile) * math.ceil(40 / tile)
    assert tile <= result.runtime.tuning["tile"], "the tuner's core, evened out"
    np.testing.assert_array_equal(read_mask(out), reference_logits(model, path).argmax(0))


def test_the_core_is_evened_out_over_both_sides_of_the_image():
    """Each side's tightest core of the tuner's count, the one with less work over the whole image: a 2048-row
    strip takes two rows of 1024-pixel cores rather than two of 1088 (2176 rows predicted), a square image the
    same count of cores a side, each as small as the stride allows."""
    from tileseg.models import card_spec

    geometry = card_spec("unet-aerial").geometry
    assert geometry.evened(1088, (2048, 100_000)) == 1024
    assert geometry.evened(1536, (8192, 8192)) == 1376  # six a side: ceil(8192 / 6) on the stride grid
    assert geometry.evened(1024, (8192, 8192)) == 1024
    for shape in ((2048, 100_000), (3000, 4500), (777, 20_000), (8192, 8192)):
        for core in (384, 1088, 1536):
            evened = geometry.evened(core, shape)
            assert evened <= core and evened % geometry.multiple == 0
            work = [math.ceil(shape[0] / c) * math.ceil(shape[1] / c) * geometry.window(c) ** 2 for c in (evened, core)]
            assert work[0] <= work[1]


def test_reading_in_turn_or_ahead_gives_the_same_mask(tmp_path, raster_factory):
    from tileseg.engine.io.remote import RemoteUrl
    from tileseg.engine.pipeline import reader_threads

    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3)
    path = raster_factory(70, 45)
    masks = []
    for readers in (0, 3, None):
        out = tmp_path / f"mask-{readers}.tif"
        segment(model, path, out, SegmentOptions(tile=8, batch=2, precision="fp32", readers=readers))
        masks.append(read_mask(out))
    np.testing.assert_array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(masks[0], masks[2])
    # auto: in turn for a local file on a CPU; ahead for a remote one, or beside a GPU
    with InputRaster(path, model.spec) as src:
        assert reader_threads(None, src, torch.device("cpu")) == 0
        assert reader_threads(None, src, torch.device("cuda")) == 2
        assert reader_threads(5, src, torch.device("cpu")) == 5
        src.path = RemoteUrl("https://example.org/scene.tif")
        assert reader_threads(None, src, torch.device("cpu")) == 2
