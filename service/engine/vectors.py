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
the same polygon, point for point as a set, that polygonizing the whole mask at once gives.

:class:`VectorSink` puts this beside the mask writer: it takes the class-index rows the mask gets, and writes
finished features to a temporary file beside the target (GeoPackage, FlatGeobuf or GeoParquet through
``pyogrio``; GeoJSON, QuPath's flavour for pixel-space inputs, written directly), renamed into place only
when the run completes.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from tileseg.engine.options import Connectivity, ObjectType
from tileseg.errors import OptionsError
from tileseg.models.spec import ModelSpec

# Suffix -> OGR driver. GeoJSON is written by this module (streamed, QuPath's members where they apply).
VECTOR_DRIVERS = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
    ".parquet": "Parquet",
}
FLUSH_EVERY = 2000  # features written per batch: bounds what finished features hold in memory
EARTH_RADIUS = 6_371_007.2  # authalic radius, metres: areas on geographic grids


def vector_driver(path: str | os.PathLike) -> str:
    """The driver that writes ``path``, from its suffix.

    Raises:
        OptionsError: an unknown suffix, or a format this machine's GDAL cannot write (GeoParquet).
    """
    suffix = Path(path).suffix.lower()
    driver = VECTOR_DRIVERS.get(suffix)
    if driver is None:
        known = ", ".join(sorted(VECTOR_DRIVERS))
        raise OptionsError(f"vectors: {Path(path).name!r} has no known vector format suffix; use one of {known}")
    if driver != "GeoJSON" and not _can_write(driver):
        raise OptionsError(f"vectors: this installation's GDAL cannot write {driver} ({suffix}); use .gpkg or .fgb")
    return driver


def _can_write(driver: str) -> bool:
    import pyogrio

    return "w" in pyogrio.list_drivers().get(driver, "")


def check_vector_path(path: str | os.PathLike) -> str:
    """Check, before any work, that vectors can be written at ``path``: a known format, a writable folder.

    Returns:
        The driver.

    Raises:
        OptionsError: an unknown format, or a folder that cannot be created or written.
    """
    driver = vector_driver(path)
    folder = Path(path).absolute().parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OptionsError(f"vectors: cannot write into {folder} (not a writable folder)")
    return driver


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp.gpkg")
        self.pending: list[Region] = []
        self.has_probability: bool | None = None
        self.written = 0

    @classmethod
    def of(cls, path, spec: ModelSpec, grid, options, pixel_size_m: float | None = None) -> VectorSink | None:
        """The sink of a run that writes vectors to ``path`` on ``grid``'s (``width``, ``crs``, ``transform``),
        with areas in µm² where the grid has no CRS but a known pixel size (``pixel_size_m``, a slide's);
        None when ``path`` is None."""
        if path is None:
            return None
        microns = pixel_size_m * 1e6 if pixel_size_m and grid.crs is None else None
        return cls(path, spec, grid.width, grid.crs, grid.transform, options, microns_per_pixel=microns)

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

        if not regions and self.tmp.exists():
            return
        fields = {
            "class": np.array([r.cls for r in regions], np.int32),
            "name": np.array([self.classes[r.cls].name for r in regions], dtype=object),
            "color": np.array([self.classes[r.cls].color for r in regions], dtype=object),
            "area": areas.astype(np.float64),
        }
        if self.has_probability:
            fields["probability"] = np.array([r.probability / max(r.pixels, 1) for r in regions], np.float64)
        eight = self.options.connectivity is Connectivity.EIGHT
        with warnings.catch_warnings():  # pixel-space inputs have no CRS, and say so in the file by that
            warnings.filterwarnings("ignore", message="'crs' was not provided")
            self._write_batch(geometries, fields, eight)
        self.written += len(regions)

    def _write_batch(self, geometries: np.ndarray, fields: dict[str, np.ndarray], eight: bool) -> None:
        import pyogrio.raw

        pyogrio.raw.write(
            self.tmp,
            np.array([shapely.to_wkb(g) for g in geometries], dtype=object),
            list(fields.values()),
            list(fields),
            layer=self.path.stem or "regions",
            driver="GPKG",
            geometry_type="MultiPolygon" if eight else "Polygon",
            promote_to_multi=eight,
            crs=_crs_text(self.crs),
            append=self.tmp.exists(),
            layer_metadata={"area_unit": self.unit.unit, "connectivity": self.options.connectivity.value},
        )

    def finish(self) -> None:
        """Write the regions still open and the rest, in the target's format, beside it: :meth:`commit` puts it
        in place."""
        self.pending.extend(self.polygonizer.finish())
        self._flush()
        if self.driver != "GPKG":
            export(self.tmp, self.ready, self.options.object_type)
            self.tmp.unlink()
        else:
            os.replace(self.tmp, self.ready)

    @property
    def ready(self) -> Path:
        """The finished file, before it is renamed into place."""
        return self.tmp.with_name(self.tmp.name.removesuffix(".tmp.gpkg") + ".done" + self.path.suffix)

    def commit(self) -> None:
        """Rename the finished file into place."""
        os.replace(self.ready, self.path)

    def discard(self) -> None:
        """Remove what was written (a failed or canceled run)."""
        self.tmp.unlink(missing_ok=True)
        self.ready.unlink(missing_ok=True)


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


def export(gpkg: str | os.PathLike, target: str | os.PathLike, object_type: ObjectType = ObjectType.ANNOTATION) -> None:
    """Convert the GeoPackage of a run to ``target``'s format (by its suffix), streamed, written in place only
    when complete.

    Raises:
        OptionsError: an unknown format.
    """
    import pyogrio.raw

    target = Path(target)
    driver = vector_driver(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if driver == "GeoJSON":
            write_geojson(gpkg, tmp, object_type)
        else:
            with pyogrio.raw.open_arrow(gpkg, use_pyarrow=False, batch_size=FLUSH_EVERY) as (meta, stream):
                pyogrio.raw.write_arrow(
                    stream,
                    tmp,
                    driver=driver,
                    geometry_name=meta["geometry_name"] or "geom",
                    geometry_type=meta["geometry_type"],
                    crs=meta["crs"],
                )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_geojson(gpkg: str | os.PathLike, target: str | os.PathLike, object_type: ObjectType) -> None:
    """Write the features of a run's GeoPackage as one GeoJSON FeatureCollection, a batch at a time.

    Georeferenced layers name their CRS (the 2008 ``crs`` member, which GDAL and QGIS read). Layers in pixel
    coordinates are QuPath's: each feature has an ``objectType`` and a ``classification`` (name, colour).
    """
    import pyogrio
    import pyogrio.raw

    info = pyogrio.read_info(gpkg)
    crs = info["crs"]
    head: dict[str, Any] = {"type": "FeatureCollection"}
    if crs:
        # an EPSG code as the OGC URN; a CRS without one as its WKT, which GDAL (and so QGIS) reads there too
        epsg = CRS.from_user_input(crs).to_epsg()
        name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else CRS.from_user_input(crs).to_wkt()
        head["crs"] = {"type": "name", "properties": {"name": name}}
    with open(target, "w", encoding="utf-8") as out:
        out.write(json.dumps(head)[:-1] + ', "features": [\n')
        first = True
        for start in range(0, info["features"], FLUSH_EVERY):
            _, _, wkb, values = pyogrio.raw.read(gpkg, skip_features=start, max_features=FLUSH_EVERY)
            records = [dict(zip(info["fields"], row)) for row in zip(*values)]
            for geometry, record in zip(shapely.from_wkb(wkb), records):
                feature = _geojson_feature(geometry, record, qupath=not crs, object_type=object_type)
                out.write(("" if first else ",\n") + feature)
                first = False
        out.write("\n]}\n")


def _geojson_feature(geometry, record: dict[str, Any], qupath: bool, object_type: ObjectType) -> str:
    properties: dict[str, Any] = {k: _plain(v) for k, v in record.items()}
    if qupath:
        color = properties["color"].lstrip("#")
        rgb = [int(color[i : i + 2], 16) for i in (0, 2, 4)]
        properties = {
            "objectType": object_type.value,
            "classification": {"name": properties["name"], "color": rgb},
            **properties,
        }
    head = f'{{"type": "Feature", "id": "{uuid.uuid4()}", "geometry": {shapely.to_geojson(geometry)}'
    return f'{head}, "properties": {json.dumps(properties)}}}'


def _crs_text(crs) -> str | None:
    """A CRS as ``AUTHORITY:CODE`` where it has one (so that readers name it), else its WKT."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


__all__ = [
    "VECTOR_DRIVERS",
    "AreaUnit",
    "Region",
    "StripPolygonizer",
    "VectorSink",
    "check_vector_path",
    "export",
    "vector_classes",
    "vector_driver",
    "write_geojson",
]
