"""The objects of an instance model, as a sink of the run (:class:`tileseg.engine.sinks.Sink`): a uint32 label
GeoTIFF (``--instances``), an objects table (``--objects``) and one feature per object (``--vectors``), all
made in the mask's pass from the same strips (:mod:`tileseg.engine.instances.decode`).

The input's bands, for each object's mean, are read again row by row from the output's grid (the strips carry
the network's output, not its input); the probability is the sum of the probabilities of the classes an object
grows into, so the runner keeps probabilities on an instance run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import shapely

from tileseg.engine.errors import OptionsError
from tileseg.engine.instances.decode import Decoded, InstanceDecoder
from tileseg.engine.instances.measure import measure
from tileseg.engine.instances.table import ObjectTable
from tileseg.engine.io.write import StripWriter, mask_profile, to_cog
from tileseg.engine.options import ObjectType
from tileseg.engine.sinks import ClassIndices
from tileseg.engine.stitching import Strip
from tileseg.engine.vectors.features import FeatureFile
from tileseg.engine.vectors.sink import AreaUnit, to_crs
from tileseg.models.spec import InstanceSpec, ModelSpec

# the fields of each object, before the mean of each input band (``band_1``, ...); all but the first four are
# measurements (QuPath's ``measurements`` in a pixel-space GeoJSON)
FIELDS = (
    "id",
    "class",
    "name",
    "color",
    "pixels",
    "area",
    "perimeter",
    "perimeter_px",
    "centroid_x",
    "centroid_y",
    "row",
    "col",
    "probability",
)


def check_instances(spec: ModelSpec, instance_models: list[str] | None = None) -> InstanceSpec:
    """The card's instance decoding; refused for a model whose card has none.

    Raises:
        OptionsError: naming the models that have one (``instance_models``).
    """
    if spec.instances is None:
        raise OptionsError(
            f"{spec.name} has no instance output (its card declares no instance decoding); "
            f"models with one: {', '.join(instance_models or []) or 'none is installed'}"
        )
    return spec.instances


class InstanceSink:
    """Objects of the run's strips (see the module docstring).

    Args:
        grid: the output's grid (a raster source: its size, CRS, transform and, for band means, its values).
        spec: the model's spec, with ``instances``.
        labels: the label GeoTIFF to write, or None.
        objects: the objects table (``.csv``, ``.parquet``), or None.
        vectors: the object features' file (its suffix says the format), or None.
        pixel_size_m: the grid's pixel size when it has no CRS (µm² areas), or None.
        cog: rewrite the label GeoTIFF as a COG.
    """

    def __init__(self, grid, spec: ModelSpec, labels=None, objects=None, vectors=None, pixel_size_m=None, cog=False):
        instances = check_instances(spec)
        self.grid, self.spec, self.cog = grid, spec, cog
        self.width = grid.width
        self.indices = ClassIndices.of(spec)
        self.channels = [k for k, c in enumerate(spec.classes) if c.index in instances.grow]
        self.seed = next(c for c in spec.classes if c.index == instances.seed)
        microns = pixel_size_m * 1e6 if pixel_size_m and grid.crs is None else None
        self.unit = AreaUnit.of(grid.crs, grid.transform, microns)
        self.labels = StripWriter(Path(labels), mask_profile(grid, 1, "uint32", None)) if labels else None
        if labels:
            Path(labels).parent.mkdir(parents=True, exist_ok=True)
        self.table = ObjectTable(objects) if objects else None
        self.bands = grid.read_region(0, 0, 1, 1).shape[0] if (objects or vectors) else 0
        self.features = None
        if vectors:
            metadata = {"area_unit": self.unit.unit, "objects": "instances"}
            measurements = FIELDS[4:] + tuple(f"band_{k + 1}" for k in range(self.bands))
            self.features = FeatureFile(vectors, grid.crs, metadata, ObjectType.DETECTION, measurements)
        self.decoder = InstanceDecoder(self.width, instances, self.bands, extras=bool(objects or vectors))
        self.count = 0

    @property
    def counts(self) -> dict[str, int]:
        """Objects per class (the seed class's name)."""
        return {self.seed.name: self.count}

    def put(self, strip: Strip) -> None:
        classes = self.indices(strip)
        probability = None
        if strip.probabilities is not None:
            probability = strip.probabilities[self.channels].sum(axis=0)
        image = self.grid.read_region(strip.y, 0, strip.height, self.width) if self.bands else None
        self._take(self.decoder.add(strip.y, classes, probability, image))

    def _take(self, decoded: Decoded) -> None:
        if self.labels is not None and len(decoded.rows):
            self.labels.write_rows(decoded.rows[None])
        self.count += len(decoded.objects.ids)
        if self.table is None and self.features is None:
            return
        found = measure(decoded.objects, with_outlines=self.features is not None)
        columns = self._columns(found)
        if self.table is not None:
            self.table.write(columns)
        if self.features is not None:
            geometries = to_crs(np.array(found["outline"], dtype=object), self.grid.transform)
            self.features.write(geometries, columns, multi=True)

    def _columns(self, found: dict) -> dict[str, np.ndarray]:
        n = len(found["id"])
        pixels = np.asarray(found["pixels"], np.float64)
        row, col = np.asarray(found["row"]), np.asarray(found["col"])
        transform = self.grid.transform
        x = transform.a * (col + 0.5) + transform.b * (row + 0.5) + transform.c
        y = transform.d * (col + 0.5) + transform.e * (row + 0.5) + transform.f
        areas = self.unit.areas(pixels, shapely.points(x, y) if n else np.zeros(0, object))
        length = np.sqrt(areas / np.maximum(pixels, 1))  # the side of one pixel, in the unit's length
        columns = {
            "id": np.asarray(found["id"], np.int64),
            "class": np.full(n, self.seed.index, np.int32),
            "name": np.array([self.seed.name] * n, dtype=object),
            "color": np.array([self.seed.color] * n, dtype=object),
            "pixels": np.asarray(found["pixels"], np.int64),
            "area": areas,
            "perimeter": np.asarray(found["perimeter_px"]) * length,
            "perimeter_px": np.asarray(found["perimeter_px"], np.float64),
            "centroid_x": x,
            "centroid_y": y,
            "row": row,
            "col": col,
            "probability": np.asarray(found["probability"], np.float64),
        }
        for k in range(self.bands):
            columns[f"band_{k + 1}"] = np.asarray(found[f"band_{k + 1}"], np.float64)
        return columns

    def finish(self, tags: dict[str, str]) -> None:
        self._take(self.decoder.finish())
        if self.table is not None:
            self.table.finish()
        if self.features is not None:
            self.features.finish()
        if self.labels is not None:
            self.labels.dataset.update_tags(**tags, TILESEG_OBJECTS=str(self.count))
            self.labels.dataset.set_band_description(1, f"{self.seed.name} instances (0: none)")
            self.labels.close()
            if self.cog:
                to_cog(self.labels.tmp)

    def commit(self) -> None:
        for output in (self.table, self.features):
            if output is not None:
                output.commit()
        if self.labels is not None:
            os.replace(self.labels.tmp, self.labels.path)

    def discard(self) -> None:
        for output in (self.table, self.features, self.labels):
            if output is not None:
                output.discard()


__all__ = ["FIELDS", "InstanceSink", "check_instances"]
