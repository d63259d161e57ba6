"""Regions of interest: segment only where it matters, and mark the rest nodata.

A region of interest is a boolean mask over the whole image's extent, held at a low resolution (at most
:data:`MASK_SIDE` pixels a side). :meth:`Roi.restrict` wraps any input reader so that its ``read_valid``
is false outside the region: the tiler then skips every tile that lies wholly outside it (no read, no
network), and the writer marks those pixels nodata, exactly as it does for an input's own nodata. Tiles
that are run read their real pixels, mirror padding and context included, so inside the region the mask
equals the mask of a run without one.

* ``auto``: tissue on a slide, found on a low-resolution read: saturation (``(max - min) / max`` of R, G,
  B; for other inputs the darkness of the first band), split by Otsu's threshold, specks and holes smaller
  than :data:`MIN_AREA` of the image removed (GDAL's sieve), then grown by a margin.
* a GeoJSON or GeoPackage file of polygons in the input's coordinates: map coordinates for a georeferenced
  raster, level-0 pixel coordinates (x right, y down, as QuPath exports) for a slide or an image without a
  CRS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize, sieve

from tileseg.engine.errors import RoiError
from tileseg.engine.io.resample import ResampledRaster, nearest_index
from tileseg.engine.io.source import RasterSource
from tileseg.engine.results import RoiReport

MASK_SIDE = 2048  # the ROI mask's longest side: a 100 000 px slide's mask costs 4 MB, one pixel per ~50 px
THUMB_SIDE = 1024  # the longest side of the read that tissue is found on
MIN_AREA = 0.001  # specks and holes below this share of the image are removed
MARGIN = 2  # thumbnail pixels the tissue is grown by, so its very edge is never cut


@dataclass
class Roi:
    """A region of interest over an image's extent.

    Attributes:
        mask: ``(h, w)`` boolean, true inside, covering the whole image.
        source: ``auto`` or the file's name.
    """

    mask: np.ndarray
    source: str

    def restrict(self, raster) -> RoiRaster:
        """``raster`` with everything outside the region read as invalid."""
        return RoiRaster(raster, self)

    def valid(self, row: int, col: int, height: int, width: int, shape: tuple[int, int]) -> np.ndarray:
        """The region over a ``(height, width)`` part at ``(row, col)`` of a grid of ``shape``."""
        rows = nearest_index(shape[0], self.mask.shape[0])[row : row + height]
        cols = nearest_index(shape[1], self.mask.shape[1])[col : col + width]
        return self.mask[rows[:, None], cols[None, :]]

    def report(self, total: int, skipped: int, seconds: float) -> RoiReport:
        """The share of the image in the region, the tiles skipped of ``total``, and the time they saved
        (estimated from the time the run took per tile it did run)."""
        run = total - skipped
        saved = seconds / run * skipped if run else 0.0
        return RoiReport(
            source=self.source,
            area_share=round(float(self.mask.mean()), 4),
            tiles_skipped=skipped,
            skipped_share=round(skipped / total, 4) if total else 0.0,
            seconds_saved_estimate=round(saved, 2),
        )


class RoiRaster:
    """A :class:`~tileseg.engine.io.source.RasterSource` whose pixels outside a region of interest read as
    invalid; everything else is its base's."""

    def __init__(self, base: RasterSource, roi: Roi):
        self.base, self.roi = base, roi
        self.height, self.width, self.scaling = base.height, base.width, base.scaling
        self.crs, self.transform = base.crs, base.transform
        self.pixel_size, self.levels, self.info = base.pixel_size, base.levels, base.info
        self.has_mask = True

    def read_window(self, row: int, col: int, length: int) -> np.ndarray:
        return self.base.read_window(row, col, length)

    def read_region(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        return self.base.read_region(row, col, height, width)

    def read_valid(self, row: int, col: int, height: int, width: int) -> np.ndarray | None:
        """Valid where the base is valid and the region covers."""
        inside = self.roi.valid(row, col, height, width, (self.height, self.width))
        base = self.base.read_valid(row, col, height, width)
        valid = inside if base is None else inside & base
        return None if valid.all() else valid


def region_of_interest(full, grid, roi: str) -> Roi:
    """The region of interest a run's ``roi`` option names: ``auto`` or a polygon file.

    Args:
        full: the input's level-0 reader (its size, CRS, transform, levels).
        grid: unused here beyond its extent, which is ``full``'s.
        roi: ``auto`` or a path to a GeoJSON or GeoPackage file.

    Raises:
        RoiError: the file cannot be read, holds no polygons, is in another CRS, or misses the image;
            ``auto`` finds no tissue.
    """
    if roi.strip().lower() == "auto":
        return Roi(find_tissue(full), "auto")
    return Roi(polygons_mask(full, Path(roi)), Path(roi).name)


def _mask_shape(height: int, width: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def thumbnail(full) -> np.ndarray:
    """A ``(bands, h, w)`` low-resolution read of the whole image (longest side :data:`THUMB_SIDE` at most),
    from the coarsest pyramid level, in bands of rows so that memory stays small without a pyramid."""
    level = len(full.levels) - 1
    base = full.at_level(level) if level else full
    try:
        shape = _mask_shape(base.height, base.width, THUMB_SIDE)
        small = ResampledRaster(base, *shape)
        step = max(1, 4_000_000 // max(1, base.width) // max(1.0, small.ry))
        parts = [small.read_region(r, 0, min(int(step), shape[0] - r), shape[1]) for r in range(0, shape[0], int(step))]
        return np.concatenate(parts, axis=1)
    finally:
        if base is not full:
            base.close()


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1]: the split that maximises the between-class variance."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    omega = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    return float(edges[1:][int(np.nanargmax(np.nan_to_num(between, nan=-1.0)))])


def find_tissue(full) -> np.ndarray:
    """Tissue (or, for other images, the darker foreground) on a low-resolution read, as a boolean mask.

    Raises:
        RoiError: nothing stands out from the background.
    """
    thumb = thumbnail(full).astype(np.float32)
    if thumb.shape[0] >= 3:
        top, low = thumb[:3].max(axis=0), thumb[:3].min(axis=0)
        signal = np.where(top > 0, (top - low) / np.maximum(top, 1), 0.0)
    else:
        band = thumb[0]
        span = float(band.max() - band.min()) or 1.0
        signal = 1 - (band - band.min()) / span
    if float(signal.max() - signal.min()) < 0.02:
        raise RoiError("roi auto found no tissue: the image looks uniform at low resolution; run without roi")
    tissue = (signal > otsu(signal)).astype(np.uint8)
    smallest = max(1, int(MIN_AREA * tissue.size))
    tissue = sieve(tissue, size=smallest, connectivity=8).astype(bool)
    return _grow(tissue, MARGIN)


def _grow(mask: np.ndarray, by: int) -> np.ndarray:
    grown = mask.copy()
    for _ in range(by):
        step = grown.copy()
        step[1:] |= grown[:-1]
        step[:-1] |= grown[1:]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    return grown


def read_polygons(path: Path) -> tuple[list[dict], CRS | None]:
    """The polygons of a GeoJSON or GeoPackage file (GeoJSON geometry dicts) and the file's CRS, if it says.

    Raises:
        RoiError: no such file, not a vector file, or no polygon in it.
    """
    if not path.is_file():
        raise RoiError(f"roi file {path} does not exist")
    if path.suffix.lower() in (".geojson", ".json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RoiError(f"roi file {path.name} is not GeoJSON: {err}") from err
        features = data.get("features", [data]) if isinstance(data, dict) else data
        geoms = [f.get("geometry", f) for f in features if isinstance(f, dict)]
        name = (data.get("crs") or {}).get("properties", {}).get("name") if isinstance(data, dict) else None
        crs = _crs(name, path) if name else None
    else:
        geoms, crs = _read_ogr(path)
    polygons = [g for g in geoms if isinstance(g, dict) and g.get("type") in ("Polygon", "MultiPolygon")]
    if not polygons:
        raise RoiError(f"roi file {path.name} holds no polygons")
    return polygons, crs


def _crs(name: str, path: Path) -> CRS:
    try:
        return CRS.from_user_input(name)
    except CRSError as err:
        raise RoiError(f"roi file {path.name} names a CRS GDAL does not know: {name}") from err


def _read_ogr(path: Path) -> tuple[list[dict], CRS | None]:
    try:
        import pyogrio
    except ImportError as err:  # pragma: no cover - pyogrio is a dependency
        raise RoiError("reading GeoPackage needs pyogrio") from err
    try:
        meta, _fids, geometry, _fields = pyogrio.raw.read(path, return_fids=False, geometry_type="GeoJSON")
    except Exception as err:  # pyogrio raises its own DataSourceError/DataLayerError and OSErrors
        raise RoiError(f"roi file {path.name} is not a vector file GDAL can read: {err}") from err
    crs = _crs(meta["crs"], path) if meta.get("crs") else None
    return [json.loads(g) for g in geometry if g is not None], crs


def polygons_mask(full, path: Path) -> np.ndarray:
    """The polygons of ``path`` burnt into a mask over ``full``'s extent.

    Raises:
        RoiError: see :func:`read_polygons`; a CRS other than the input's; no polygon over the image.
    """
    polygons, crs = read_polygons(path)
    if crs is not None and (full.crs is None or CRS.from_user_input(full.crs) != crs):
        theirs = full.crs.to_string() if full.crs is not None else "pixel coordinates (no CRS)"
        raise RoiError(
            f"roi file {path.name} is in {crs.to_string()}, the input in {theirs}: reproject the polygons "
            "to the input's coordinates"
        )
    shape = _mask_shape(full.height, full.width, MASK_SIDE)
    base = full.transform if full.crs is not None and full.transform is not None else Affine.identity()
    transform = base @ Affine.scale(full.width / shape[1], full.height / shape[0])
    mask = rasterize(polygons, out_shape=shape, transform=transform, all_touched=True, dtype="uint8").astype(bool)
    if not mask.any():
        raise RoiError(
            f"the polygons of roi file {path.name} do not cover any of the image: are they in its coordinates?"
        )
    return mask


__all__ = ["Roi", "RoiRaster", "find_tissue", "otsu", "polygons_mask", "read_polygons", "region_of_interest"]
