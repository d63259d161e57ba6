"""Vector output: the regions of the mask (:mod:`tileseg.engine.vectors.polygons`) written as features.

:class:`VectorSink` is a sink (:class:`tileseg.engine.sinks.Sink`) beside the mask's: it takes the same
strips, turns their labels into class indices with the input's nodata applied, and writes finished features
to a temporary file beside the target (GeoPackage, FlatGeobuf or GeoParquet through ``pyogrio``; GeoJSON,
QuPath's flavour for pixel-space inputs, written directly), renamed into place only when the run completes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from affine import Affine

from tileseg.engine.errors import OptionsError
from tileseg.engine.options import Connectivity
from tileseg.engine.sinks import ClassIndices
from tileseg.engine.stitching import Strip
from tileseg.engine.vectors.features import FLUSH_EVERY, FeatureFile, check_vector_path, export
from tileseg.engine.vectors.polygons import Region, StripPolygonizer
from tileseg.models.spec import ModelSpec

EARTH_RADIUS = 6_371_007.2  # authalic radius, metres: areas on geographic grids


@dataclass(frozen=True)
class AreaUnit:
    """How a region's pixel count becomes an area in the input's unit.

    Attributes:
        unit: ``m²`` (a projected or geographic CRS), ``µm²`` (a known pixel size in µm) or ``px²``.
        pixel_area: the area of one pixel in ``unit`` (for a geographic CRS: at the equator).
        geographic: areas shrink with the cosine of the latitude (taken at each polygon's centroid).
    """

    unit: str
    pixel_area: float
    geographic: bool = False

    @classmethod
    def of(cls, crs, transform: Affine, microns_per_pixel: float | None = None) -> AreaUnit:
        """The unit of a grid: its CRS's (in m²), else µm² from a pixel size, else px²."""
        pixels = abs(transform.a * transform.e - transform.b * transform.d)
        if crs is not None and crs.is_projected:
            return cls("m²", pixels * crs.linear_units_factor[1] ** 2)
        if crs is not None and crs.is_geographic:
            return cls("m²", pixels * (math.pi * EARTH_RADIUS / 180) ** 2, geographic=True)
        if microns_per_pixel:
            return cls("µm²", microns_per_pixel**2)
        return cls("px²", 1.0)

    def areas(self, pixels: np.ndarray, geometries: np.ndarray) -> np.ndarray:
        """Areas of regions of ``pixels`` pixels whose polygons (in the CRS) are ``geometries``."""
        areas = pixels * self.pixel_area
        if self.geographic and len(geometries):
            latitude = shapely.get_y(shapely.centroid(geometries))
            areas = areas * np.cos(np.radians(latitude))
        return areas


def to_crs(geometries: np.ndarray, transform: Affine) -> np.ndarray:
    """Polygons in pixel coordinates -> the grid's coordinates (an affine map: exact for integer pixels)."""
    a, b, c, d, e, f = transform[:6]
    matrix = np.array([[a, d], [b, e]])
    return shapely.transform(geometries, lambda xy: xy @ matrix + (c, f))


class VectorSink:
    """Polygons of the mask's rows, written as they are finished; the file appears only when complete.

    Args:
        path: the vector file to write (its suffix says the format: :data:`VECTOR_DRIVERS`).
        spec: the model's spec (class names, colours, background classes, class index -> channel).
        width: the mask's width.
        crs, transform: the mask's grid (None and the identity for pixel-space inputs).
        options: the run's options (``vector_classes``, ``connectivity``, ``min_area``, ``simplify``,
            ``object_type``).
        microns_per_pixel: the input's pixel size, if known (areas in µm²).

    Raises:
        OptionsError: an unknown format or an unwritable folder; a ``vector_classes`` index not in the card.
    """

    def __init__(self, path, spec: ModelSpec, width: int, crs, transform: Affine, options, microns_per_pixel=None):
        self.path = Path(path)
        self.driver = check_vector_path(self.path)
        self.crs, self.transform = crs, transform
        self.options = options
        self.classes = {c.index: c for c in spec.classes}
        wanted = vector_classes(spec, options.vector_classes)
        channels = {c.index: k for k, c in enumerate(spec.classes)}
        self.polygonizer = StripPolygonizer(width, wanted, options.connectivity, channels)
        self.unit = AreaUnit.of(crs, transform, microns_per_pixel)
        metadata = {"area_unit": self.unit.unit, "connectivity": options.connectivity.value}
        self.file = FeatureFile(self.path, crs, metadata, options.object_type)
        self.pending: list[Region] = []
        self.has_probability: bool | None = None
        self.written = 0
        self.indices = ClassIndices.of(spec)

    @classmethod
    def of(cls, path, spec: ModelSpec, grid, options, pixel_size_m: float | None = None) -> VectorSink | None:
        """The sink of a run that writes vectors to ``path`` on ``grid``'s (``width``, ``crs``, ``transform``),
        with areas in µm² where the grid has no CRS but a known pixel size (``pixel_size_m``, a slide's);
        None when ``path`` is None."""
        if path is None:
            return None
        microns = pixel_size_m * 1e6 if pixel_size_m and grid.crs is None else None
        return cls(path, spec, grid.width, grid.crs, grid.transform, options, microns_per_pixel=microns)

    def put(self, strip: Strip) -> None:
        """Take the next strip of the run (its class indices, nodata applied, are what the mask gets)."""
        self.write(strip.y, self.indices(strip), strip.probabilities)

    def write(self, y: int, mask: np.ndarray, probabilities: np.ndarray | None) -> None:
        """Take the mask's rows from ``y`` (class indices, nodata applied) and their probabilities, if any."""
        if self.has_probability is None:
            self.has_probability = probabilities is not None
        self.pending.extend(self.polygonizer.add(y, mask, probabilities if self.has_probability else None))
        if len(self.pending) >= FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        regions, self.pending = self.pending, []
        pixels = np.array([r.pixels for r in regions], np.float64)
        keep = pixels * self.unit.pixel_area >= self.options.min_area if not self.unit.geographic else pixels > 0
        regions = [r for r, k in zip(regions, keep) if k]
        geometries = np.array([r.geometry() for r in regions], dtype=object)
        if self.options.simplify > 0 and len(geometries):
            geometries = shapely.simplify(geometries, self.options.simplify, preserve_topology=True)
        geometries = to_crs(geometries, self.transform)
        areas = self.unit.areas(np.array([r.pixels for r in regions], np.float64), geometries)
        if self.unit.geographic:
            keep = areas >= self.options.min_area
            regions, geometries, areas = [r for r, k in zip(regions, keep) if k], geometries[keep], areas[keep]
        self._append(regions, geometries, areas)

    def _append(self, regions: list[Region], geometries: np.ndarray, areas: np.ndarray) -> None:

        if not regions and self.file.started:
            return
        fields = {
            "class": np.array([r.cls for r in regions], np.int32),
            "name": np.array([self.classes[r.cls].name for r in regions], dtype=object),
            "color": np.array([self.classes[r.cls].color for r in regions], dtype=object),
            "area": areas.astype(np.float64),
        }
        if self.has_probability:
            fields["probability"] = np.array([r.probability / max(r.pixels, 1) for r in regions], np.float64)
        self.file.write(geometries, fields, multi=self.options.connectivity is Connectivity.EIGHT)
        self.written += len(regions)

    def finish(self, tags: dict[str, str] | None = None) -> None:
        """Write the regions still open and the rest, in the target's format, beside it: :meth:`commit` puts it
        in place. (``tags``, the run's provenance, are the mask's: a vector file keeps none.)"""
        self.pending.extend(self.polygonizer.finish())
        self._flush()
        self.file.finish()

    def commit(self) -> None:
        """Rename the finished file into place."""
        self.file.commit()

    def discard(self) -> None:
        """Remove what was written (a failed or canceled run)."""
        self.file.discard()


def vector_classes(spec: ModelSpec, chosen: Sequence[int] | None) -> list[int]:
    """The class indices to make polygons of: ``chosen``, or every class the card does not mark background.

    Raises:
        OptionsError: a chosen index that is not one of the card's classes.
    """
    indices = [c.index for c in spec.classes]
    if chosen is None:
        return [c.index for c in spec.classes if not c.background]
    unknown = sorted(set(chosen) - set(indices))
    if unknown:
        raise OptionsError(f"vector_classes: {unknown} are not classes of {spec.name} (its classes: {indices})")
    return list(chosen)


__all__ = ["AreaUnit", "VectorSink", "check_vector_path", "export", "to_crs", "vector_classes"]
