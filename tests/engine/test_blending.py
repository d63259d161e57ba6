"""Blend weights: one per output pixel of a window, largest at the centre, never zero."""

from __future__ import annotations

import numpy as np
import pytest

from tileseg.engine.blending import FLOOR, blend_weights
from tileseg.models.spec import BlendMode

BLENDED = [BlendMode.GAUSSIAN, BlendMode.COSINE]


@pytest.mark.parametrize("mode", BLENDED)
@pytest.mark.parametrize("size", [1, 2, 9, 24, 65])
def test_weights_cover_the_window_with_their_maximum_at_the_centre(mode, size):
    weights = blend_weights(mode, size)
    assert weights.shape == (size, size) and weights.dtype == np.float32
    assert weights.max() == 1
    centre = slice((size - 1) // 2, size // 2 + 1)  # one pixel for odd sizes, the middle four for even ones
    np.testing.assert_allclose(weights[centre, centre], 1, rtol=0, atol=1e-7)
    np.testing.assert_allclose(weights, weights.T, rtol=0, atol=1e-7)
    np.testing.assert_allclose(weights, weights[::-1, ::-1], rtol=0, atol=1e-7)


@pytest.mark.parametrize("mode", BLENDED)
def test_weights_fall_towards_the_border_down_to_the_floor(mode):
    weights = blend_weights(mode, 64)
    half = weights[32, 32:]  # from the centre to the right-hand border
    assert (np.diff(half) <= 0).all() and half[-1] < half[0]
    assert weights.min() == np.float32(FLOOR)  # a corner, pulled up: no pixel is left without weight
    assert weights.min() > 0


def test_known_values():
    gaussian = blend_weights(BlendMode.GAUSSIAN, 9)  # sigma = 9 / 8
    np.testing.assert_allclose(gaussian[4, 5], np.exp(-1 / (2 * (9 / 8) ** 2)), rtol=1e-6)
    np.testing.assert_allclose(gaussian[3, 5], np.exp(-2 / (2 * (9 / 8) ** 2)), rtol=1e-6)
    cosine = blend_weights(BlendMode.COSINE, 4)  # a Hann window: sin^2(pi (i + 1/2) / 4), normalised
    profile = np.sin(np.pi * (np.arange(4) + 0.5) / 4) ** 2
    np.testing.assert_allclose(cosine, np.outer(profile, profile) / profile.max() ** 2, rtol=1e-6)


def test_the_modes_differ():
    assert np.abs(blend_weights(BlendMode.GAUSSIAN, 32) - blend_weights(BlendMode.COSINE, 32)).max() > 0.1


def test_crop_does_not_blend():
    with pytest.raises(ValueError, match="does not blend"):
        blend_weights(BlendMode.CROP, 8)
