"""Stitching: turning per-tile predictions into finished, full-width rows of the output, in order.

Tiles arrive in row-major order. A stitcher holds only one band of tile rows and hands back a
:class:`Strip` as soon as its rows can no longer change, so memory follows the tile row, not the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tileseg.engine.tiling import Tile, TilePlan


@dataclass
class Strip:
    """Finished output rows ``y .. y + height`` of the whole image width.

    ``channels``: the winning network channel per pixel ``(height, width)``;
    ``probabilities``: ``(K, height, width)`` float32 in [0, 1], or None when not asked for.
    """

    y: int
    channels: np.ndarray
    probabilities: np.ndarray | None

    @property
    def height(self) -> int:
        return self.channels.shape[0]


class CropStitcher:
    """Crop mode: each core is already final; a tile row's cores side by side make a strip."""

    def __init__(self, plan: TilePlan, num_classes: int, probabilities: bool, index_dtype=np.uint8):
        self.plan = plan
        self.num_classes = num_classes
        self.probabilities = probabilities
        self.index_dtype = index_dtype
        self._strip: Strip | None = None

    def add(self, tile: Tile, channels: np.ndarray | None, probabilities: np.ndarray | None) -> Strip | None:
        """Place one tile's core (None for a skipped, all-nodata tile); returns a strip when a row is done."""
        if tile.col == 0:
            width = self.plan.width
            probs = np.zeros((self.num_classes, tile.height, width), np.float32) if self.probabilities else None
            self._strip = Strip(tile.y, np.zeros((tile.height, width), self.index_dtype), probs)
        strip = self._strip
        cols = slice(tile.x, tile.x + tile.width)
        if channels is not None:
            strip.channels[:, cols] = channels[: tile.height, : tile.width]
            if strip.probabilities is not None:
                strip.probabilities[:, :, cols] = probabilities[:, : tile.height, : tile.width]
        if tile.col == self.plan.cols - 1:
            self._strip = None
            return strip
        return None


class BlendStitcher:
    """Blended modes: weighted probabilities of overlapping windows summed in a band of ``output_size``
    rows that rolls down the image; rows no later window can reach are normalised and handed on."""

    def __init__(self, plan: TilePlan, num_classes: int, weights: np.ndarray, index_dtype=np.uint8):
        settings = plan.settings
        self.plan = plan
        self.weights = weights
        self.index_dtype = index_dtype
        self.margin = settings.margin
        self.size = settings.output_size
        width = (plan.cols - 1) * settings.step + self.size
        self.acc = np.zeros((num_classes, self.size, width), np.float32)
        self.wsum = np.zeros((self.size, width), np.float32)
        self.top = -self.margin  # image row of the band's first row; band column j is image column j - margin

    def add(self, tile: Tile, probabilities: np.ndarray | None) -> Strip | None:
        """Accumulate one window's probabilities ``(K, size, size)`` (None for a skipped tile)."""
        if probabilities is not None:
            r0 = tile.y - self.margin - self.top
            rows, cols = slice(r0, r0 + self.size), slice(tile.x, tile.x + self.size)
            self.acc[:, rows, cols] += probabilities * self.weights
            self.wsum[rows, cols] += self.weights
        if tile.col == self.plan.cols - 1:
            return self._emit(tile.row)
        return None

    def _emit(self, row: int) -> Strip | None:
        plan, step = self.plan, self.plan.settings.step
        last = row == plan.rows - 1
        end = plan.height if last else min(plan.height, (row + 1) * step - self.margin)
        done = end - self.top  # band rows that are final
        first = max(0, -self.top)  # band rows above the image are dropped
        strip = None
        if done > first:
            cols = slice(self.margin, self.margin + plan.width)
            probs = self.acc[:, first:done, cols] / np.maximum(self.wsum[first:done, cols], 1e-12)
            strip = Strip(self.top + first, probs.argmax(axis=0).astype(self.index_dtype), probs)
        if done > 0:
            self.acc[:, : self.size - done] = self.acc[:, done:]
            self.acc[:, self.size - done :] = 0
            self.wsum[: self.size - done] = self.wsum[done:]
            self.wsum[self.size - done :] = 0
        self.top = end
        return strip
