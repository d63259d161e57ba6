"""Objects from the class mask, strip by strip, equal to decoding the whole image at once.

The decoding of a card's :class:`~tileseg.models.spec.InstanceSpec`:

1. *seeds*: the 8-connected regions of the seed class (object cores), eroded by ``erode`` pixels first;
2. *growth*: every pixel of a ``grow`` class takes the seed region of its nearest seed pixel within
   ``distance`` pixels (Euclidean; on a tie the seed pixel first in row order), or none;
3. objects of fewer than ``min_area`` pixels are dropped; the others are numbered 1..N in the order of
   (the last row of their seeds, their first seed pixel in row order).

Every step is local (the erosion lags ``erode`` rows behind the rows taken) except the seed regions, which are
joined across strips with a union-find over the seam rows, as the polygons are. So a run in strips decodes
exactly the whole image's objects, with the same ids, whatever the strip heights, the tiling or the shards that
made the mask.

:class:`InstanceDecoder` holds only what is still open: the seed rows within ``distance`` of the rows not yet
grown, and the grown rows that hold an unfinished object. A seed region is finished once a strip's last row
does not hold it; its object is finished ``distance`` rows later. Memory therefore follows the strip and the
tallest object, never the image or the number of objects. Each finished object comes with its sums (pixels,
rows, columns, probability, every input band) for the measurements (:mod:`tileseg.engine.instances.measure`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tileseg.models.spec import InstanceSpec

EIGHT = np.ones((3, 3), dtype=bool)
CROSS = ndimage.generate_binary_structure(2, 1)
# provisional ids of seed regions: one per region and strip, so 2**31 covers any image; half the memory of int64
LABEL = np.int32
MAX_LABEL = np.iinfo(LABEL).max
# the sums kept per object, before one per input band
PIXELS, ROWS, COLS, PROBABILITY = 0, 1, 2, 3


def bytes_per_pixel(bands: int, extras: bool) -> int:
    """What the decoder holds per pixel of the strip it decodes, about: whether the pixel may grow (a byte), the
    seed labels, the growth window, the grown labels and the final ids (4 bytes each, each once more while a
    strip is joined to the rows before it) and, with ``extras``, the probability and every band as float32
    (twice: the strip's and the rows held). The memory budget counts it for each row of the band of tile rows."""
    return 2 * (1 + 4 * 4) + (2 * 4 * (1 + bands) if extras else 0)


def growth_offsets(distance: int) -> list[tuple[int, int]]:
    """The offsets to a seed pixel within ``distance``, nearest first, then in row order: the order in which
    a pixel looks for its seed."""
    reach = range(-distance, distance + 1)
    offsets = [(dy, dx) for dy in reach for dx in reach if dy * dy + dx * dx <= distance * distance]
    return sorted(offsets, key=lambda o: (o[0] * o[0] + o[1] * o[1], o[0], o[1]))


@dataclass
class Finished:
    """Objects finished by one call of the decoder.

    Attributes:
        ids: (N,) their final ids (1.. over the whole image).
        sums: (N, 4 + bands) float64: pixels, sum of rows, sum of columns, sum of probabilities, sum of each band.
        labels: the grown rows that hold them, with their provisional labels (for outlines and perimeters).
        top: the image row of ``labels``' first row.
        provisional: (N,) each object's label in ``labels``.
    """

    ids: np.ndarray
    sums: np.ndarray
    labels: np.ndarray
    top: int
    provisional: np.ndarray


@dataclass
class Decoded:
    """What one call of the decoder hands on: final label rows from ``y`` (maybe none) and finished objects."""

    y: int
    rows: np.ndarray  # (h, width) uint32
    objects: Finished


class InstanceDecoder:
    """Objects of a mask given top to bottom in strips of any height (see the module docstring).

    Args:
        width: the mask's width.
        spec: the card's instance decoding.
        bands: the input bands whose per-object sums are wanted (0: none).
        extras: whether the probability and band sums are wanted at all (False: labels and shapes only, their
            sums left 0, and nothing of the probabilities or the bands held).
    """

    def __init__(self, width: int, spec: InstanceSpec, bands: int = 0, extras: bool = True):
        self.width, self.spec, self.bands, self.extras = width, spec, bands, extras
        self.d = spec.distance
        self.offsets = growth_offsets(self.d)
        self.next_id = 1
        self.next_final = 1
        self.y = 0  # rows taken
        # seed labels of rows [sy - len(seeds), sy); growth done for rows [g, ...); grown rows kept from e
        self.seeds = np.zeros((0, width), LABEL)
        self.sy = 0  # rows whose seeds are known: y less the erosion's lag
        self.cores = np.zeros((0, width), bool)  # seed-class rows from sy - erode (or 0) to y: the erosion's context
        self.g = 0
        self.pending_grows = np.zeros((0, width), bool)  # the rows not grown yet: which pixels may grow
        self.pending_extra = np.zeros((0, 1 + bands, width), np.float32)
        self.out = np.zeros((0, width), LABEL)
        self.e = 0
        self.live: dict[int, list] = {}  # root -> [first pixel index, last seed row, sums]
        self.final: dict[int, tuple[int, int]] = {}  # finished provisional root -> (final id or 0, last row)
        self.merged: dict[int, int] = {}  # provisional id -> the root it was joined to, in the current strip

    def add(self, y: int, classes: np.ndarray, probability: np.ndarray | None = None, image: np.ndarray | None = None):
        """Take the mask's rows from ``y`` (class indices, nodata applied), the probability that each pixel is
        part of an object (or None) and the input's bands ((bands, h, width), or None)."""
        if y != self.y or classes.shape[1] != self.width:
            raise ValueError(f"rows must come in order and full width: expected row {self.y}, got {y}")
        h = classes.shape[0]
        self._cores(classes == self.spec.seed, last=False)
        grows = classes == self.spec.grow[0]
        for index in self.spec.grow[1:]:
            grows |= classes == index
        self.pending_grows = np.concatenate([self.pending_grows, grows])
        if self.extras:
            extra = np.zeros((1 + self.bands, h, self.width), np.float32)
            if probability is not None:
                extra[0] = probability
            if image is not None and self.bands:
                extra[1:] = image
            self.pending_extra = np.concatenate([self.pending_extra, extra.transpose(1, 0, 2)])
        self._grow(self.sy - self.d)
        return self._finish_some(last=False)

    def finish(self) -> Decoded:
        """Decode the rows still open (the image's last rows): every object is finished."""
        self._cores(np.zeros((0, self.width), bool), last=True)
        self._grow(self.y)
        return self._finish_some(last=True)

    # -- seeds ---------------------------------------------------------------------------------------------------

    def _cores(self, cores: np.ndarray, last: bool) -> None:
        """Take the next rows of the seed class; label the seed rows that the erosion has settled: all of them
        with no erosion, else those ``erode`` rows or more above the last row taken (all at the image's end)."""
        self.y += len(cores)
        k = self.spec.erode
        if not k:
            if len(cores):
                self._seeds(self.sy, cores)
            self.sy = self.y
            return
        top = self.y - len(self.cores) - len(cores)  # the image row of the block's first row
        block = np.concatenate([self.cores, cores])
        # outside the image counts as seed; the block's first and last k rows, unless they are the image's own
        # edge, see a wrong edge and are not taken
        eroded = ndimage.binary_erosion(block, CROSS, iterations=k, border_value=1)
        until = self.y if last else self.y - k
        if until > self.sy:
            self._seeds(self.sy, eroded[self.sy - top : until - top])
            self.sy = until
        self.cores = block[max(self.sy - k, 0) - top :]

    def _seeds(self, y: int, seeds: np.ndarray) -> None:
        labels, count = ndimage.label(seeds, structure=EIGHT)
        labels = labels.astype(LABEL, copy=False)
        if self.next_id + count >= MAX_LABEL:
            raise ValueError(f"more than {MAX_LABEL} seed regions: the provisional ids would overflow")
        if count:
            self._new_regions(y, labels, count)
            np.add(labels, self.next_id - 1, out=labels, where=labels > 0)
            self.next_id += count
        if len(self.seeds):
            self._join(self.seeds[-1], labels[0])
            labels = self._apply(labels)
        self.seeds = np.concatenate([self.seeds, labels])

    def _new_regions(self, y: int, labels: np.ndarray, count: int) -> None:
        """Open the strip's seed regions 1..count (ids ``next_id``...): each one's first pixel and last row."""
        boxes = ndimage.find_objects(labels)
        tops = np.array([box[0].start for box in boxes])
        bottoms = np.array([box[0].stop - 1 for box in boxes])
        lefts = np.array([box[1].start for box in boxes])
        widths = np.array([box[1].stop for box in boxes]) - lefts
        # each region's first pixel: the first of its own pixels along its box's top row (the boxes' top rows
        # together, not the strip: a few pixels per region)
        starts = np.cumsum(widths) - widths
        step = np.arange(int(widths.sum())) - np.repeat(starts, widths)
        cols = np.repeat(lefts, widths) + step
        own = np.flatnonzero(labels[np.repeat(tops, widths), cols] == np.repeat(np.arange(1, count + 1), widths))
        first_col = cols[own[np.searchsorted(own, starts)]]
        firsts = (y + tops) * self.width + first_col
        for k, (first, bottom) in enumerate(zip(firsts.tolist(), bottoms.tolist())):
            self.live[self.next_id + k] = [first, y + bottom, np.zeros(4 + self.bands)]

    def _join(self, above: np.ndarray, below: np.ndarray) -> None:
        parent: dict[int, int] = {}

        def root(i: int) -> int:
            while parent.get(i, i) != i:
                i = parent[i]
            return i

        pairs: set[tuple[int, int]] = set()
        for dx in (-1, 0, 1):
            up = above[max(dx, 0) : self.width + min(dx, 0)]
            down = below[max(-dx, 0) : self.width + min(-dx, 0)]
            both = (up > 0) & (down > 0)
            pairs.update(zip(up[both].tolist(), down[both].tolist()))
        for a, b in pairs:
            ra, rb = root(a), root(b)
            if ra != rb:
                keep, gone = min(ra, rb), max(ra, rb)
                parent[gone] = keep
        self.merged = {i: root(i) for i in parent}
        for gone, keep in sorted(self.merged.items(), reverse=True):
            kept, lost = self.live[keep], self.live.pop(gone)
            kept[0], kept[1], kept[2] = min(kept[0], lost[0]), max(kept[1], lost[1]), kept[2] + lost[2]
        if self.merged:
            self.seeds = self._apply(self.seeds)
            self.out = self._apply(self.out)

    def _apply(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` with every merged id replaced by its root."""
        merged = self.merged
        if not merged or not labels.size:
            return labels
        keys = np.fromiter(merged, np.int64)
        lo, hi = int(keys.min()), int(keys.max())
        table = np.arange(lo, hi + 1, dtype=LABEL)
        table[keys - lo] = np.fromiter(merged.values(), LABEL)
        inside = (labels >= lo) & (labels <= hi)
        out = labels.copy()
        out[inside] = table[labels[inside] - lo]
        return out

    # -- growth --------------------------------------------------------------------------------------------------

    def _grow(self, until: int) -> None:
        """Grow rows [g, until): their seeds to ``distance`` rows below are known (or lie past the image)."""
        self.merged = {}
        h = until - self.g
        if h <= 0:
            return
        d, width = self.d, self.width
        seed_top = self.sy - len(self.seeds)
        window = np.zeros((h + 2 * d, width + 2 * d), LABEL)
        lo, hi = max(self.g - d, seed_top), min(until + d, self.sy)
        window[lo - (self.g - d) : hi - (self.g - d), d : d + width] = self.seeds[lo - seed_top : hi - seed_top]
        # the grown rows are written in place after the rows kept; a seed pixel is its own region's
        out = np.empty((len(self.out) + h, width), LABEL)
        out[: len(self.out)] = self.out
        grown = out[len(self.out) :]
        grown[:] = window[d : d + h, d : d + width]
        # the others look for their nearest seed pixel, in order; positions as flat indices of the window
        wide = width + 2 * d
        flat = np.flatnonzero(self.pending_grows[:h] & (grown == 0))
        at = flat + flat // width * (2 * d) + (d * wide + d)
        waiting = np.arange(len(flat))
        found = np.zeros(len(flat), LABEL)
        cells = window.ravel()
        for dy, dx in self.offsets[1:]:
            seed = cells[at + (dy * wide + dx)]
            hit = seed > 0
            taken = np.flatnonzero(hit)
            found[waiting[taken]] = seed[taken]
            missed = np.flatnonzero(~hit)
            at, waiting = at[missed], waiting[missed]
            if not len(waiting):
                break
        grown.ravel()[flat] = found
        self._sums(self.g, grown, self.pending_extra[:h])
        self.out = out
        self.pending_grows = self.pending_grows[h:]
        self.pending_extra = self.pending_extra[h:]
        self.g = until
        keep_from = max(self.g - max(d, 1), seed_top)
        self.seeds = self.seeds[keep_from - seed_top :]

    def _sums(self, top: int, grown: np.ndarray, extra: np.ndarray) -> None:
        inside = grown > 0
        labels = grown[inside]  # in row order, as np.nonzero lists the pixels
        if not len(labels):
            return
        lo = int(labels.min())
        index = labels - lo
        size = int(index.max()) + 1
        pixels = np.bincount(index, minlength=size)
        present = np.flatnonzero(pixels)
        ids = present + lo
        sums = np.zeros((4 + self.bands, len(present)))
        sums[PIXELS] = pixels[present]
        if self.extras:  # the centroid, probability and band sums are for the measurements alone
            rows, cols = np.nonzero(inside)
            sums[ROWS] = np.bincount(index, weights=rows + top, minlength=size)[present]
            sums[COLS] = np.bincount(index, weights=cols, minlength=size)[present]
            for k in range(1 + self.bands):
                weights = extra[rows, k, cols]
                sums[PROBABILITY + k] = np.bincount(index, weights=weights, minlength=size)[present]
        for i, column in zip(ids.tolist(), sums.T):
            self.live[i][2] += column

    # -- finishing -----------------------------------------------------------------------------------------------

    def _finish_some(self, last: bool) -> Decoded:
        # a seed region is closed once the last seed row known does not hold it; its growth reaches d rows further
        done = [
            i for i, (_, bottom, _) in self.live.items() if last or (bottom + self.d < self.g and bottom < self.sy - 1)
        ]
        done.sort(key=lambda i: (self.live[i][1], self.live[i][0]))
        ids = np.zeros(len(done), np.int64)
        sums = np.zeros((len(done), 4 + self.bands))
        for k, i in enumerate(done):
            _, bottom, total = self.live.pop(i)
            if total[PIXELS] >= self.spec.min_area:
                ids[k] = self.next_final
                self.next_final += 1
            self.final[i] = (int(ids[k]), bottom + self.d)
            sums[k] = total
        kept = ids > 0
        finished = Finished(ids[kept], sums[kept], self.out, self.e, np.array(done, np.int64)[kept])
        rows = self._emit(last)
        return Decoded(self.e - len(rows), rows, finished)

    def _emit(self, last: bool) -> np.ndarray:
        """The grown rows whose objects are all finished, with their final ids; dropped from what is kept."""
        if not len(self.out):
            return np.zeros((0, self.width), np.uint32)
        count = len(self.out) if last else self._ready_rows()
        rows = self._final_ids(self.out[:count])
        self.out = self.out[count:]
        self.e += count
        self.final = {i: v for i, v in self.final.items() if v[1] >= self.e}
        return rows

    def _ready_rows(self) -> int:
        """How many of the kept rows, from the top, hold finished objects only: those above every open seed
        region's first row less ``distance`` (the farthest its growth reaches up)."""
        if not self.live:
            return len(self.out)
        top = min(first for first, _, _ in self.live.values()) // self.width - self.d
        return min(max(top - self.e, 0), len(self.out))

    def _final_ids(self, labels: np.ndarray) -> np.ndarray:
        inside = labels > 0
        out = np.zeros(labels.shape, np.uint32)
        if not inside.any():
            return out
        present = labels[inside]
        lo, hi = int(present.min()), int(present.max())
        table = np.zeros(hi - lo + 1, np.uint32)
        for i, (final, _) in self.final.items():
            if lo <= i <= hi:
                table[i - lo] = final
        out[inside] = table[present - lo]
        return out


def decode_whole(classes: np.ndarray, spec: InstanceSpec) -> np.ndarray:
    """The objects of a whole class mask in memory, as uint32 labels (what a run in strips writes)."""
    decoder = InstanceDecoder(classes.shape[1], spec)
    labels = np.zeros(classes.shape, np.uint32)
    for decoded in (decoder.add(0, classes), decoder.finish()):
        labels[decoded.y : decoded.y + len(decoded.rows)] = decoded.rows
    return labels


__all__ = ["Decoded", "Finished", "InstanceDecoder", "bytes_per_pixel", "decode_whole", "growth_offsets"]
