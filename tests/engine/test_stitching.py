"""Stitchers: tiles' predictions in, full-width rows out, in order, holding only a band of rows."""

from __future__ import annotations

import numpy as np
import pytest

from tileseg.engine.blending import blend_weights
from tileseg.engine.prediction import TilePrediction
from tileseg.engine.stitching import BlendStitcher, CropStitcher, Strip, build_stitcher
from tileseg.engine.tiling import TilePlan, TileSettings
from tileseg.models.spec import BlendMode, Geometry

GEOMETRY = Geometry(halo=8, multiple=4)
CLASSES = 3
OUTSIDE = 99  # what a prediction holds past the image's edge: must never reach a strip


def crop_plan(height: int = 19, width: int = 21) -> TilePlan:
    return TilePlan(TileSettings(GEOMETRY, core=8), height, width)


def blend_plan(height: int = 21, width: int = 30, mode: str = "gaussian") -> TilePlan:
    return TilePlan(TileSettings(GEOMETRY, core=16, blend=mode, overlap=0.25), height, width)


def truth(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(H, W)`` and probabilities ``(K, H, W)`` of a whole image, padded with ``OUTSIDE`` on the
    bottom and right by more than a core, as the cores of the last row and column reach past the image."""
    rng = np.random.default_rng(seed)
    labels = np.full((height + 16, width + 16), OUTSIDE, np.uint8)
    labels[:height, :width] = rng.integers(0, CLASSES, (height, width))
    probs = np.full((CLASSES, height + 16, width + 16), OUTSIDE, np.float32)
    probs[:, :height, :width] = rng.random((CLASSES, height, width))
    return labels, probs


def core_prediction(plan: TilePlan, tile, labels: np.ndarray, probs: np.ndarray) -> TilePrediction:
    """What the runner gives in crop mode: the whole core, also where it reaches past the image."""
    core = plan.settings.core
    rows, cols = slice(tile.y, tile.y + core), slice(tile.x, tile.x + core)
    return TilePrediction(labels=labels[rows, cols], probabilities=probs[:, rows, cols])


def run(stitcher, plan: TilePlan, predict) -> list[tuple[int, Strip]]:
    """Every tile through ``stitcher``; the strips with the index of the tile that completed each."""
    strips = []
    for tile in plan:
        strip = stitcher.aggregate(tile, predict(tile))
        if strip is not None:
            strips.append((tile.index, strip))
    assert stitcher.finalize() is None  # both stitchers hand back their last rows with the last tile
    return strips


def test_crop_stitcher_hands_back_full_width_rows_in_order():
    plan = crop_plan(19, 21)
    labels, probs = truth(19, 21)
    stitcher = CropStitcher(plan, CLASSES, probabilities=False)
    strips = run(stitcher, plan, lambda tile: core_prediction(plan, tile, labels, probs))
    assert [index for index, _ in strips] == [2, 5, 8]  # each at the last tile of its row, never before
    assert [(s.y, s.height) for _, s in strips] == [(0, 8), (8, 8), (16, 3)]
    for _, strip in strips:
        assert strip.labels.shape == (strip.height, 21) and strip.labels.dtype == np.uint8
        assert strip.probabilities is None
    np.testing.assert_array_equal(np.concatenate([s.labels for _, s in strips]), labels[:19, :21])


def test_crop_stitcher_keeps_probabilities_when_asked():
    plan = crop_plan(19, 21)
    labels, probs = truth(19, 21, seed=1)
    stitcher = CropStitcher(plan, CLASSES, probabilities=True, index_dtype=np.int16)
    strips = [s for _, s in run(stitcher, plan, lambda tile: core_prediction(plan, tile, labels, probs))]
    assert {s.labels.dtype for s in strips} == {np.dtype(np.int16)}
    np.testing.assert_array_equal(np.concatenate([s.labels for s in strips]), labels[:19, :21])
    np.testing.assert_array_equal(np.concatenate([s.probabilities for s in strips], axis=1), probs[:, :19, :21])


def test_a_skipped_tile_leaves_zeros():
    plan = crop_plan(16, 16)
    labels, probs = truth(16, 16, seed=2)
    skipped = 1  # the top right core

    def predict(tile):
        return None if tile.index == skipped else core_prediction(plan, tile, labels, probs)

    strips = [s for _, s in run(CropStitcher(plan, CLASSES, probabilities=True), plan, predict)]
    got = np.concatenate([s.labels for s in strips])
    assert (got[:8, 8:] == 0).all() and (strips[0].probabilities[:, :, 8:] == 0).all()
    expected = labels[:16, :16].copy()
    expected[:8, 8:] = 0
    np.testing.assert_array_equal(got, expected)


def direct_weighted_average(plan: TilePlan, windows: dict[int, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Blending as its definition says, over the whole image at once: the sum of each window's weighted
    probabilities over the sum of the weights, pixel by pixel."""
    margin, size = plan.settings.margin, plan.settings.output_size
    height = (plan.rows - 1) * plan.settings.step + size
    width = (plan.cols - 1) * plan.settings.step + size
    total = np.zeros((CLASSES, height, width), np.float64)
    weight = np.zeros((height, width), np.float64)
    for tile in plan:
        if tile.index in windows:  # canvas row r is image row r - margin
            total[:, tile.y : tile.y + size, tile.x : tile.x + size] += windows[tile.index] * weights
            weight[tile.y : tile.y + size, tile.x : tile.x + size] += weights
    average = total / np.maximum(weight, 1e-12)
    return average[:, margin : margin + plan.height, margin : margin + plan.width]


@pytest.mark.parametrize("mode", ["gaussian", "cosine"])
@pytest.mark.parametrize("size,skipped", [((21, 30), set()), ((21, 30), {5}), ((4, 50), set()), ((45, 9), {0, 1})])
def test_blend_stitcher_equals_a_direct_weighted_average(mode, size, skipped):
    plan = blend_plan(*size, mode=mode)
    settings = plan.settings
    assert settings.step < settings.output_size  # the windows overlap: there is something to blend
    rng = np.random.default_rng(3)
    shape = (settings.output_size, settings.output_size)
    windows = {
        t.index: rng.dirichlet(np.ones(CLASSES), shape).transpose(2, 0, 1).astype(np.float32)
        for t in plan
        if t.index not in skipped
    }
    weights = blend_weights(settings.blend, settings.output_size)

    def predict(tile):
        return TilePrediction(probabilities=windows[tile.index]) if tile.index in windows else None

    strips = [s for _, s in run(BlendStitcher(plan, CLASSES, weights), plan, predict)]
    assert [s.y for s in strips] == list(np.cumsum([0] + [s.height for s in strips[:-1]]))  # in order, no gap
    got = np.concatenate([s.probabilities for s in strips], axis=1)
    expected = direct_weighted_average(plan, windows, weights)
    assert got.shape == (CLASSES, *size)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([s.labels for s in strips]), got.argmax(0))


def test_blend_stitcher_rolls_a_band_down_the_image():
    """Memory follows the window, not the image: the accumulator is one output window high whatever the
    image's height, and rows are handed on as soon as no later window reaches them."""
    short, tall = blend_plan(21, 30), blend_plan(400, 30)
    size = short.settings.output_size
    weights = blend_weights(BlendMode.GAUSSIAN, size)
    assert BlendStitcher(short, CLASSES, weights).acc.shape == BlendStitcher(tall, CLASSES, weights).acc.shape
    stitcher = BlendStitcher(tall, CLASSES, weights)
    assert stitcher.acc.shape[1] == size
    window = np.full((CLASSES, size, size), 1 / CLASSES, np.float32)
    strips = run(stitcher, tall, lambda tile: TilePrediction(probabilities=window))
    completed_by_rows = [index // tall.cols for index, _ in strips]
    assert len(strips) == tall.rows - 1  # every tile row from the second on finishes some rows
    assert completed_by_rows == list(range(1, tall.rows))
    assert sum(s.height for _, s in strips) == 400


def test_tiles_must_come_in_the_plans_order():
    plan = crop_plan()
    tiles = list(plan)
    stitcher = CropStitcher(plan, CLASSES, probabilities=False)
    with pytest.raises(ValueError, match="out of order"):
        stitcher.aggregate(tiles[1], None)
    stitcher.aggregate(tiles[0], None)
    with pytest.raises(ValueError, match="out of order"):
        stitcher.aggregate(tiles[0], None)


@pytest.mark.parametrize("blend", ["crop", "gaussian"])
def test_finalize_refuses_an_unfinished_plan(blend):
    plan = crop_plan() if blend == "crop" else blend_plan()
    stitcher = build_stitcher(plan, CLASSES, probabilities=False)
    stitcher.aggregate(next(iter(plan)), None)
    with pytest.raises(ValueError, match=f"after 1 of the plan's {len(plan)} tiles"):
        stitcher.finalize()


def test_the_plans_blend_mode_picks_the_stitcher():
    crop = build_stitcher(crop_plan(), CLASSES, probabilities=True, index_dtype=np.int16)
    assert isinstance(crop, CropStitcher) and crop.probabilities and crop.index_dtype is np.int16
    for mode in (BlendMode.GAUSSIAN, BlendMode.COSINE):
        plan = blend_plan(mode=mode.value)
        blended = build_stitcher(plan, CLASSES, probabilities=False)
        assert isinstance(blended, BlendStitcher)
        np.testing.assert_array_equal(blended.weights, blend_weights(mode, plan.settings.output_size))
