"""Vector files written a batch at a time: a GeoPackage beside the target, converted to the target's format
(FlatGeobuf, GeoParquet, GeoJSON: QuPath's flavour for pixel-space layers) when complete, renamed into place
only at commit. What the polygons of the classes (:mod:`tileseg.engine.vectors.sink`) and the objects of an
instance model (:mod:`tileseg.engine.instances.sink`) share.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.crs import CRS

from tileseg.engine.errors import OptionsError
from tileseg.engine.options import ObjectType

# Suffix -> OGR driver. GeoJSON is written by this module (streamed, QuPath's members where they apply).
VECTOR_DRIVERS = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
    ".parquet": "Parquet",
}
FLUSH_EVERY = 2000  # features written per batch: bounds what finished features hold in memory


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


class FeatureFile:
    """One vector file of a run: :meth:`write` batches, :meth:`finish` completes it beside ``path``,
    :meth:`commit` renames it into place, :meth:`discard` removes what was written.

    Args:
        path: the target (its suffix says the format: :data:`VECTOR_DRIVERS`).
        crs: the features' CRS, or None (pixel coordinates).
        metadata: the layer's metadata (units, connectivity, ...).
        object_type: what QuPath makes of each feature of a pixel-space GeoJSON.
        measurements: the fields that QuPath gets as the object's measurements (pixel-space GeoJSON).

    Raises:
        OptionsError: an unknown format or an unwritable folder.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        crs,
        metadata: dict[str, str],
        object_type: ObjectType = ObjectType.ANNOTATION,
        measurements: tuple[str, ...] = (),
    ):
        self.path = Path(path)
        self.driver = check_vector_path(self.path)
        self.crs, self.metadata = crs, metadata
        self.object_type, self.measurements = object_type, measurements
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp.gpkg")

    @property
    def started(self) -> bool:
        return self.tmp.exists()

    def write(self, geometries: np.ndarray, fields: dict[str, np.ndarray], multi: bool) -> None:
        """Append features: ``geometries`` in the CRS, one array per field (the first batch makes the layer,
        even an empty one)."""
        import pyogrio.raw

        with warnings.catch_warnings():  # pixel-space inputs have no CRS, and say so in the file by that
            warnings.filterwarnings("ignore", message="'crs' was not provided")
            pyogrio.raw.write(
                self.tmp,
                np.array([shapely.to_wkb(g) for g in geometries], dtype=object),
                list(fields.values()),
                list(fields),
                layer=self.path.stem or "regions",
                driver="GPKG",
                geometry_type="MultiPolygon" if multi else "Polygon",
                promote_to_multi=multi,
                crs=_crs_text(self.crs),
                append=self.tmp.exists(),
                layer_metadata=self.metadata,
            )

    def finish(self) -> None:
        """Complete the file in the target's format beside it."""
        if self.driver != "GPKG":
            export(self.tmp, self.ready, self.object_type, self.measurements)
            self.tmp.unlink()
        else:
            os.replace(self.tmp, self.ready)

    @property
    def ready(self) -> Path:
        """The finished file, before it is renamed into place."""
        return self.tmp.with_name(self.tmp.name.removesuffix(".tmp.gpkg") + ".done" + self.path.suffix)

    def commit(self) -> None:
        os.replace(self.ready, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)
        self.ready.unlink(missing_ok=True)


def export(
    gpkg: str | os.PathLike,
    target: str | os.PathLike,
    object_type: ObjectType = ObjectType.ANNOTATION,
    measurements: tuple[str, ...] = (),
) -> None:
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
            write_geojson(gpkg, tmp, object_type, measurements)
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


def write_geojson(
    gpkg: str | os.PathLike, target: str | os.PathLike, object_type: ObjectType, measurements: tuple[str, ...] = ()
) -> None:
    """Write the features of a run's GeoPackage as one GeoJSON FeatureCollection, a batch at a time.

    Georeferenced layers name their CRS (the 2008 ``crs`` member, which GDAL and QGIS read). Layers in pixel
    coordinates are QuPath's: each feature has an ``objectType`` and a ``classification`` (name, colour), and the
    fields named in ``measurements`` as its ``measurements``.
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
                feature = _geojson_feature(geometry, record, not crs, object_type, measurements)
                out.write(("" if first else ",\n") + feature)
                first = False
        out.write("\n]}\n")


def _geojson_feature(
    geometry, record: dict[str, Any], qupath: bool, object_type: ObjectType, measurements: tuple[str, ...]
) -> str:
    properties: dict[str, Any] = {k: _plain(v) for k, v in record.items()}
    if qupath and measurements:
        properties["measurements"] = {k: properties.pop(k) for k in measurements if k in properties}
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


__all__ = ["VECTOR_DRIVERS", "FeatureFile", "check_vector_path", "export", "vector_driver", "write_geojson"]
