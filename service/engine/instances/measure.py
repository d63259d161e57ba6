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


def _shifted(padded: np.ndarray, dy: int, dx: int) -> np.ndarray:
    h, w = padded.shape[0] - 2, padded.shape[1] - 2
    return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def perimeters(labels: np.ndarray, count: int) -> np.ndarray:
    """The perimeter of objects 1..``count`` of a compact label image (``regionprops``' ``perimeter``)."""
    padded = np.pad(labels, 1)
    inside = labels > 0
    same = {o: _shifted(padded, *o) == labels for o in FOUR + DIAGONAL}
    border = inside & ~np.logical_and.reduce([same[o] for o in FOUR])
    padded_border = np.pad(border, 1)
    code = border.astype(np.int64)
    for o in FOUR:
        code += 2 * (_shifted(padded_border, *o) & same[o])
    for o in DIAGONAL:
        code += 10 * (_shifted(padded_border, *o) & same[o])
    weights = np.where(border, PERIMETER_WEIGHTS[code], 0.0)
    return np.bincount(labels[border], weights=weights[border], minlength=count + 1)[1:]


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
    rows = np.flatnonzero(np.isin(finished.labels, finished.provisional).any(axis=1))
    first, last = int(rows[0]), int(rows[-1]) + 1
    labels = compact(finished.labels[first:last], finished.provisional)
    result["perimeter_px"] = perimeters(labels, count)
    if with_outlines:
        result["outline"] = outlines(labels, count, finished.top + first)
    return result


__all__ = ["compact", "measure", "outlines", "perimeters"]
