"""Measurements and outlines of finished objects, computed from the decoder's label rows at once for all of them.

The measurements are those of scikit-image's ``regionprops`` on the whole label image (tests hold them to it):
the pixel count, the centroid (row, column), the perimeter (4-neighbourhood, with the weights of Benkrid and
Crookes' perimeter estimate as scikit-image applies them) and the mean of each input band; plus the mean
probability that the object's pixels are part of an object. Outlines are GDAL's polygons of the label rows, in
pixel coordinates, one (Multi)Polygon per object.
"""

from __future__ import annotations

import math

import numpy as np
import rasterio.features
import shapely
from affine import Affine

from tileseg.engine.instances.decode import COLS, PIXELS, PROBABILITY, ROWS, Finished

# weight of a border pixel by its code: 1 for itself, 2 per border 4-neighbour, 10 per border diagonal one
PERIMETER_WEIGHTS = np.zeros(50)
PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2
FOUR = ((-1, 0), (1, 0), (0, -1), (0, 1))
DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def compact(labels: np.ndarray, provisional: np.ndarray) -> np.ndarray:
    """``labels`` with the objects of ``provisional`` numbered 1..N in its order, every other pixel 0 (int32)."""
    out = np.zeros(labels.shape, np.int32)
    if not len(provisional):
        return out
    lo, hi = int(provisional.min()), int(provisional.max())
    table = np.zeros(hi - lo + 1, np.int32)
    table[provisional - lo] = np.arange(1, len(provisional) + 1, dtype=np.int32)
    inside = (labels >= lo) & (labels <= hi)
    out[inside] = table[labels[inside] - lo]
    return out


def perimeters(labels: np.ndarray, count: int) -> np.ndarray:
    """The perimeter of objects 1..``count`` of a compact label image (``regionprops``' ``perimeter``).

    Computed at the objects' pixels only (flat indices of the padded image), not over the whole strip."""
    padded = np.pad(labels, 1)
    cells = padded.ravel()
    wide = padded.shape[1]
    at = np.flatnonzero(cells)
    own = cells[at]
    # a border pixel has a 4-neighbour outside its object
    interior = np.ones(len(at), bool)
    for dy, dx in FOUR:
        interior &= cells[at + (dy * wide + dx)] == own
    at, own = at[~interior], own[~interior]
    is_border = np.zeros(cells.shape, bool)
    is_border[at] = True
    code = np.ones(len(at), np.int64)
    for weight, offsets in ((2, FOUR), (10, DIAGONAL)):
        for dy, dx in offsets:
            near = at + (dy * wide + dx)
            code += weight * (is_border[near] & (cells[near] == own))
    return np.bincount(own, weights=PERIMETER_WEIGHTS[code], minlength=count + 1)[1:]


def outlines(labels: np.ndarray, count: int, top: int) -> list[shapely.Geometry]:
    """Polygons of objects 1..``count`` of a compact label image whose first row is image row ``top``, in the
    image's pixel coordinates."""
    parts: list[list[shapely.Geometry]] = [[] for _ in range(count)]
    shapes = rasterio.features.shapes(labels, mask=labels > 0, connectivity=8, transform=Affine.translation(0, top))
    for geometry, value in shapes:
        parts[int(value) - 1].append(shapely.geometry.shape(geometry))
    return [p[0] if len(p) == 1 else shapely.MultiPolygon(p) for p in parts]


def measure(finished: Finished, with_outlines: bool) -> dict[str, np.ndarray | list]:
    """The measurements of finished objects (``id``, ``pixels``, ``row``, ``col``, ``perimeter_px``,
    ``probability``, ``band_k`` means) and, if asked, their ``outline`` in pixel coordinates."""
    count = len(finished.ids)
    sums = finished.sums
    pixels = sums[:, PIXELS]
    result: dict[str, np.ndarray | list] = {
        "id": finished.ids.astype(np.int64),
        "pixels": pixels.astype(np.int64),
        "row": sums[:, ROWS] / pixels,
        "col": sums[:, COLS] / pixels,
        "probability": sums[:, PROBABILITY] / pixels,
    }
    for k in range(sums.shape[1] - PROBABILITY - 1):
        result[f"band_{k + 1}"] = sums[:, PROBABILITY + 1 + k] / pixels
    if not count:
        result["perimeter_px"] = np.zeros(0)
        if with_outlines:
            result["outline"] = []
        return result
    labels = compact(finished.labels, finished.provisional)
    rows = np.flatnonzero(labels.any(axis=1))
    first, last = int(rows[0]), int(rows[-1]) + 1
    labels = labels[first:last]
    result["perimeter_px"] = perimeters(labels, count)
    if with_outlines:
        result["outline"] = outlines(labels, count, finished.top + first)
    return result


__all__ = ["compact", "measure", "outlines", "perimeters"]
