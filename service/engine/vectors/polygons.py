"""Polygons from the mask: every connected region of every object class, made strip by strip, whole across seams.

The engine finishes the mask in full-width strips, top to bottom (:class:`tileseg.engine.stitching.Strip`).
:class:`StripPolygonizer` turns each strip into regions as it comes:

1. label the connected pixels of each class in the strip (``scipy.ndimage.label``, 4- or 8-connected);
2. polygonize the labels (``rasterio.features.shapes``, GDAL's polygonizer), in pixel coordinates, which are
   integers, so that pieces of one region meet exactly along a seam;
3. join the regions that touch the strip's first row to the *open* regions of the strip above (those that
   touched its last row): pixels of one class that are neighbours across the seam put their regions in one
   group (connected components of the seam's graph, i.e. a union-find), whose pieces, pixel counts and
   probability sums are carried as one region;
4. hand on the regions that no longer touch the strip's last row: they are finished; the others stay open.

Only open regions are held, so memory follows the strip and the outlines of regions that cross it, never the
image. A finished region's pieces are unioned once (``shapely.union_all``), and it becomes one feature:
the same polygon, point for point as a set, that polygonizing the whole mask at once gives. Writing the
features is :mod:`tileseg.engine.vectors.sink`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from tileseg.engine.options import Connectivity


@dataclass
class Region:
    """A connected region of one class, or the part of it seen so far.

    Attributes:
        cls: the class index.
        pieces: its polygons in pixel coordinates, one or more per strip it crosses.
        pixels: its pixel count.
        probability: the sum of its pixels' probabilities of its class (0 when none are computed).
    """

    cls: int
    pieces: list[shapely.Polygon]
    pixels: int
    probability: float = 0.0

    def absorb(self, other: Region) -> None:
        self.pieces.extend(other.pieces)
        self.pixels += other.pixels
        self.probability += other.probability

    def geometry(self) -> shapely.Geometry:
        """The region's polygon in pixel coordinates (a MultiPolygon only for 8-connected diagonal touches)."""
        if len(self.pieces) == 1:
            shape = self.pieces[0]
            return shape if shapely.is_valid(shape) else shapely.make_valid(shape)
        # the pieces meet exactly on integer seams; simplify(0) drops the vertices left on the seam lines
        return shapely.simplify(shapely.union_all(self.pieces), 0.0)


@dataclass
class _Labels:
    """One strip's regions: ``ids`` (0 = none, k = ``regions[k - 1]``) and the regions."""

    ids: np.ndarray
    regions: list[Region] = field(default_factory=list)


class StripPolygonizer:
    """Regions of the mask, strip by strip, each handed on once, whole, when no later row can reach it.

    Args:
        width: the mask's width.
        classes: the class indices to make regions of (others, and nodata, are left out).
        connectivity: which neighbours join pixels into a region: 4 (edges) or 8 (edges and corners).
        channels: class index -> the network's channel, to read a region's probabilities from a strip's.
    """

    def __init__(self, width: int, classes: Sequence[int], connectivity: Connectivity, channels: dict[int, int]):
        self.width = width
        self.classes = sorted(set(classes))
        self.eight = connectivity is Connectivity.EIGHT
        self.structure = np.ones((3, 3), bool) if self.eight else ndimage.generate_binary_structure(2, 1)
        self.channels = channels
        self.open: list[Region] = []
        self.edge = np.zeros(width, np.int64)  # last row seen: k = open[k - 1], 0 = no open region there
        self.rows = 0

    def add(self, y: int, mask: np.ndarray, probabilities: np.ndarray | None = None) -> list[Region]:
        """Take the mask's rows ``y .. y + len(mask)`` (class indices) and their channels' probabilities.

        Returns:
            The regions finished by these rows.

        Raises:
            ValueError: the rows are not the next ones, or not the mask's width.
        """
        if y != self.rows or mask.shape[1] != self.width:
            raise ValueError(f"rows {y}.. of width {mask.shape[1]}: expected rows {self.rows}.. of width {self.width}")
        self.rows += mask.shape[0]
        strip = self._label(y, mask, probabilities)
        old = len(self.open)
        nodes = self.open + strip.regions
        if not nodes:
            self.edge[:] = 0
            return []
        group = self._seam_groups(strip.ids[0], strip.regions)
        merged: dict[int, Region] = {}
        for node, g in zip(nodes, group.tolist()):
            if g in merged:
                merged[g].absorb(node)
            else:
                merged[g] = node
        last = strip.ids[-1]
        # the group of each pixel of the last row (-1: none), and which groups stay open
        last_group = np.where(last > 0, group[np.maximum(old + last.astype(np.int64) - 1, 0)], -1)
        order = np.unique(last_group[last_group >= 0])
        position = np.zeros(len(nodes) + 1, np.int64)
        position[order] = np.arange(1, len(order) + 1)
        self.edge = np.where(last_group >= 0, position[last_group], 0)
        self.open = [merged[int(g)] for g in order]
        still_open = set(order.tolist())
        return [region for g, region in merged.items() if g not in still_open]

    def finish(self) -> list[Region]:
        """The regions still open once the last row has come."""
        done, self.open = self.open, []
        self.edge = np.zeros(self.width, np.int64)
        return done

    def _label(self, y: int, mask: np.ndarray, probabilities: np.ndarray | None) -> _Labels:
        """Label each class's connected pixels, polygonize them, count their pixels and probabilities."""
        ids = np.zeros(mask.shape, np.int32)
        classes: list[int] = []
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=max(self.classes, default=0) + 1))
        for cls in sorted(set(present.tolist()) & set(self.classes)):
            labels, count = ndimage.label(mask == cls, self.structure)
            ids = np.where(labels > 0, labels + len(classes), ids).astype(np.int32, copy=False)
            classes.extend([cls] * count)
        pieces: list[list[shapely.Polygon]] = [[] for _ in classes]
        # connectivity 4 here: an 8-connected region's diagonal pieces are polygons of their own, unioned later
        for shape, value in rasterio.features.shapes(
            ids, mask=ids > 0, connectivity=4, transform=Affine.translation(0, y)
        ):
            rings = shape["coordinates"]
            pieces[int(value) - 1].append(shapely.Polygon(rings[0], rings[1:]))
        pixels = np.bincount(ids.ravel(), minlength=len(classes) + 1)
        sums = self._probability_sums(ids, mask, probabilities, len(classes))
        regions = [Region(c, p, int(n), float(s)) for c, p, n, s in zip(classes, pieces, pixels[1:], sums[1:])]
        return _Labels(ids, regions)

    def _probability_sums(
        self, ids: np.ndarray, mask: np.ndarray, probabilities: np.ndarray | None, count: int
    ) -> np.ndarray:
        if probabilities is None or count == 0:
            return np.zeros(count + 1)
        lut = np.zeros(int(mask.max()) + 1, np.int64)
        for cls, channel in self.channels.items():
            if cls < len(lut):
                lut[cls] = channel
        own = np.take_along_axis(probabilities, lut[mask][None], axis=0)[0]
        return np.bincount(ids.ravel(), weights=own.ravel(), minlength=count + 1)

    def _seam_groups(self, top: np.ndarray, regions: list[Region]) -> np.ndarray:
        """The group of each node (the open regions, then ``regions``): regions of one class whose pixels are
        neighbours across the seam share a group."""
        old, nodes = len(self.open), len(self.open) + len(regions)
        if old == 0 or not regions:
            return np.arange(nodes)
        pairs = [(self.edge, top)]
        if self.eight:
            pairs += [(self.edge[:-1], top[1:]), (self.edge[1:], top[:-1])]
        above = np.concatenate([a for a, _ in pairs]).astype(np.int64)
        here = np.concatenate([b for _, b in pairs]).astype(np.int64)
        both = (above > 0) & (here > 0)
        above, here = above[both] - 1, here[both] - 1
        old_class = np.array([r.cls for r in self.open])
        new_class = np.array([r.cls for r in regions])
        same = old_class[above] == new_class[here]
        rows, cols = above[same], here[same] + old
        graph = sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(nodes, nodes))
        return csgraph.connected_components(graph, directed=False)[1]


__all__ = ["Region", "StripPolygonizer"]
