"""Weights for blending overlapping window predictions (nnU-Net and MONAI blend in the same spirit).

A weight map is built once per run for the network's output window and multiplies each window's class
probabilities before they are summed; dividing by the summed weights gives the blended probabilities.
Weights fall towards the window's border, where a network without exact tiling sees the least context.
"""

from __future__ import annotations

import numpy as np

from tileseg.models.spec import BlendMode

FLOOR = 1e-3  # keeps every pixel's weight positive, so a pixel seen by a single window is still defined


def blend_weights(mode: BlendMode, size: int) -> np.ndarray:
    """A ``(size, size)`` float32 weight map with its maximum 1 at the centre.

    ``gaussian``: sigma = size / 8 (nnU-Net's choice); ``cosine``: a Hann window, ``sin^2`` along each axis.
    """
    centre = (size - 1) / 2
    positions = np.arange(size, dtype=np.float64)
    if mode is BlendMode.GAUSSIAN:
        sigma = size / 8
        profile = np.exp(-((positions - centre) ** 2) / (2 * sigma**2))
    elif mode is BlendMode.COSINE:
        profile = np.sin(np.pi * (positions + 0.5) / size) ** 2
    else:
        raise ValueError(f"{mode} does not blend")
    weights = np.outer(profile, profile)
    weights /= weights.max()
    return np.maximum(weights, FLOOR).astype(np.float32)
