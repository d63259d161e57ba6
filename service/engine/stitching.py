"""Stitching: turning per-tile predictions into finished, full-width rows of the output, in order.

Every stitcher has the same two calls, in the spirit of MONAI's mergers: :meth:`Stitcher.aggregate` takes
one tile and its prediction, in the plan's row-major order, and hands back a :class:`Strip` as soon as some
rows can no longer change; :meth:`Stitcher.finalize` hands back whatever is still held once every tile has
come. A stitcher holds only one band of rows, so memory follows the tile row, not the image.

* :class:`CropStitcher` (crop mode): each core is final; a tile row's cores side by side make a strip.
* :class:`BlendStitcher` (gaussian, cosine): weighted probabilities of overlapping windows are summed in a
  band that rolls down the image.

:func:`build_stitcher` picks the one for a plan's blend mode; :func:`regrid_strips` puts the strips of a
resampled grid back on the input's grid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from tileseg.engine.blending import blend_weights
from tileseg.engine.io.resample import nearest_index
from tileseg.engine.prediction import TilePrediction
from tileseg.engine.tiling import Tile, TilePlan
from tileseg.models.spec import BlendMode


@dataclass
class Strip:
    """Finished output rows ``y .. y + height`` of the whole image width.

    Attributes:
        y: the first image row.
        labels: ``(height, width)`` the winning output channel of the network per pixel. This is a channel
            index, not yet a class index: the writer maps channel ``k`` to the model card's
            ``spec.classes[k].index`` and marks nodata (:class:`tileseg.engine.sinks.ClassIndices`).
        probabilities: ``(K, height, width)`` float32 in [0, 1] per channel, or None when not asked for.
        valid: ``(height, width)`` the input's validity of these rows, or None when all of them are valid (or
            not known yet: the pipeline adds it once the strip is on the output's grid).
    """

    y: int
    labels: np.ndarray
    probabilities: np.ndarray | None
    valid: np.ndarray | None = None

    @property
    def height(self) -> int:
        return self.labels.shape[0]


class Stitcher(ABC):
    """Takes the tiles of a plan, with their predictions, in row-major order; hands back finished strips.

    Args:
        plan: the tiles to expect.
    """

    def __init__(self, plan: TilePlan):
        self.plan = plan
        self._next = 0  # index of the tile expected next

    def aggregate(self, tile: Tile, prediction: TilePrediction | None) -> Strip | None:
        """Take one tile's prediction.

        Args:
            tile: the plan's next tile.
            prediction: what the network predicted for it; None for a tile skipped because it is wholly
                nodata (its pixels stay 0, which the writer then marks as nodata).

        Returns:
            The strip of rows this tile completed, or None.

        Raises:
            ValueError: the tile is not the one the plan has next.
        """
        if tile.index != self._next:
            raise ValueError(f"tile {tile.index} came out of order: the plan's tile {self._next} comes next")
        self._next += 1
        return self._place(tile, prediction)

    def finalize(self) -> Strip | None:
        """The rows still held once every tile has been aggregated, or None when all were handed back.

        Raises:
            ValueError: some of the plan's tiles have not been aggregated yet.
        """
        if self._next != len(self.plan):
            raise ValueError(f"finalize after {self._next} of the plan's {len(self.plan)} tiles")
        return self._rest()

    @abstractmethod
    def _place(self, tile: Tile, prediction: TilePrediction | None) -> Strip | None:
        """Put one tile's prediction in place; the strip it completed, or None."""

    def _rest(self) -> Strip | None:
        # both stitchers here hand back the last rows with the last tile
        return None


class CropStitcher(Stitcher):
    """Crop mode: each core is already final; a tile row's cores side by side make a strip.

    Args:
        plan: the tiles to expect.
        num_classes: K, the network's output channels.
        probabilities: whether to keep the cores' probabilities too (then every prediction must carry them).
        index_dtype: the dtype of the labels (uint8 up to 256 channels).
    """

    def __init__(self, plan: TilePlan, num_classes: int, probabilities: bool, index_dtype=np.uint8):
        super().__init__(plan)
        self.num_classes = num_classes
        self.probabilities = probabilities
        self.index_dtype = index_dtype
        self._strip: Strip | None = None

    def _place(self, tile: Tile, prediction: TilePrediction | None) -> Strip | None:
        if tile.col == 0:
            self._strip = self._empty_strip(tile)
        strip = self._strip
        if strip is None:  # the base class refuses tiles out of order, so only a bug gets here
            raise ValueError(f"tile {tile.index} continues a tile row that was never started")
        if prediction is not None:
            cols = slice(tile.x, tile.x + tile.width)
            strip.labels[:, cols] = prediction.labels[: tile.height, : tile.width]
            if strip.probabilities is not None:
                strip.probabilities[:, :, cols] = prediction.probabilities[:, : tile.height, : tile.width]
        if tile.col < self.plan.cols - 1:
            return None
        self._strip = None
        return strip

    def _empty_strip(self, tile: Tile) -> Strip:
        width = self.plan.width
        probs = np.zeros((self.num_classes, tile.height, width), np.float32) if self.probabilities else None
        return Strip(tile.y, np.zeros((tile.height, width), self.index_dtype), probs)


class BlendStitcher(Stitcher):
    """Blended modes: weighted probabilities of overlapping windows summed in a band of ``output_size``
    rows that rolls down the image; rows no later window can reach are normalised and handed on.

    Args:
        plan: the tiles to expect.
        num_classes: K, the network's output channels.
        weights: ``(output_size, output_size)`` weights of a window's pixels (:mod:`tileseg.engine.blending`).
        index_dtype: the dtype of the labels (uint8 up to 256 channels).
    """

    def __init__(self, plan: TilePlan, num_classes: int, weights: np.ndarray, index_dtype=np.uint8):
        super().__init__(plan)
        settings = plan.settings
        self.weights = weights
        self.index_dtype = index_dtype
        self.margin = settings.margin
        self.size = settings.output_size
        width = (plan.cols - 1) * settings.step + self.size
        self.acc = np.zeros((num_classes, self.size, width), np.float32)
        self.wsum = np.zeros((self.size, width), np.float32)
        self.top = -self.margin  # image row of the band's first row; band column j is image column j - margin

    def _place(self, tile: Tile, prediction: TilePrediction | None) -> Strip | None:
        if prediction is not None:
            r0 = tile.y - self.margin - self.top
            rows, cols = slice(r0, r0 + self.size), slice(tile.x, tile.x + self.size)
            self.acc[:, rows, cols] += prediction.probabilities * self.weights
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


def build_stitcher(plan: TilePlan, num_classes: int, probabilities: bool, index_dtype=np.uint8) -> Stitcher:
    """The stitcher for the plan's blend mode.

    Args:
        plan: the tiles to expect.
        num_classes: K, the network's output channels.
        probabilities: crop mode: keep the cores' probabilities too. Blended modes always keep them: they
            are what is blended.
        index_dtype: the dtype of the labels.
    """
    blend = plan.settings.blend
    if blend is BlendMode.CROP:
        return CropStitcher(plan, num_classes, probabilities, index_dtype)
    return BlendStitcher(plan, num_classes, blend_weights(blend, plan.settings.output_size), index_dtype)


def regrid_strips(strips: Iterable[Strip], grid: tuple[int, int], out: tuple[int, int]) -> Iterator[Strip]:
    """Strips of a ``grid`` (height, width) mask turned into strips of an ``out`` (height, width) mask of the
    same extent, by nearest neighbour (class labels must stay labels; probabilities are taken alike).
    Only the grid rows still needed are held, so memory follows the strips."""
    rows, cols = nearest_index(out[0], grid[0]), nearest_index(out[1], grid[1])
    held: Strip | None = None
    y = 0
    for strip in strips:
        held = strip if held is None else _join(held, strip)
        stop = int(np.searchsorted(rows, held.y + held.height, side="left"))
        if stop > y:
            pick = rows[y:stop] - held.y
            probs = held.probabilities
            yield Strip(y, held.labels[pick][:, cols], None if probs is None else probs[:, pick][:, :, cols])
            y = stop
        drop = (rows[y] if y < out[0] else held.y + held.height) - held.y
        held = _tail(held, drop)


def _join(a: Strip, b: Strip) -> Strip:
    probs = None if a.probabilities is None else np.concatenate([a.probabilities, b.probabilities], axis=1)
    return Strip(a.y, np.concatenate([a.labels, b.labels]), probs)


def _tail(strip: Strip, drop: int) -> Strip:
    probs = None if strip.probabilities is None else strip.probabilities[:, drop:]
    return Strip(strip.y + drop, strip.labels[drop:], probs)


__all__ = ["BlendStitcher", "CropStitcher", "Stitcher", "Strip", "build_stitcher", "regrid_strips"]
