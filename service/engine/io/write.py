"""Writing a GeoTIFF: full-width rows in, in order, a complete file out, or nothing.

A :class:`StripWriter` writes rows in block-aligned strips to a temporary file beside the target, which its
owner renames into place (:class:`tileseg.engine.sinks.MaskSink`) or removes; :func:`mask_profile` derives
the output's profile from the input's grid, :func:`write_class_colours` writes the colour table (before the
first row), :func:`write_class_metadata` the class names and provenance tags, :func:`to_cog` rewrites a
finished file as a Cloud Optimized GeoTIFF.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from tileseg.engine.io.read import OUTPUT_BLOCK
from tileseg.engine.io.source import RasterSource
from tileseg.models.spec import ModelSpec


class StripWriter:
    """Writes full-width rows of a raster in order, in strips aligned to the output blocks.

    The rows go to a temporary file beside ``path`` (``tmp``); :meth:`close` completes it and the owner
    renames it into place (:class:`tileseg.engine.sinks.MaskSink`), or :meth:`discard` removes it, so a
    failed run never leaves a partial file.
    """

    def __init__(self, path: str | os.PathLike, profile: dict[str, Any]):
        self.path = Path(path)
        self.profile = profile
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp.tif")
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._next_row = 0
        with warnings.catch_warnings():  # an input without georeferencing gives an output without it: fine
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._dst = rasterio.open(self.tmp, "w", **profile)

    @property
    def dataset(self):
        return self._dst

    def write_rows(self, rows: np.ndarray) -> None:
        """Append ``(bands, n, width)`` rows; full block rows are written at once."""
        self._pending.append(rows)
        self._pending_rows += rows.shape[1]
        block = self.profile.get("blockysize", OUTPUT_BLOCK)
        if self._pending_rows >= block:
            data = np.concatenate(self._pending, axis=1)
            cut = data.shape[1] - data.shape[1] % block
            self._write(data[:, :cut])
            rest = data[:, cut:]
            self._pending = [rest] if rest.shape[1] else []
            self._pending_rows = rest.shape[1]

    def _write(self, data: np.ndarray) -> None:
        window = Window(0, self._next_row, data.shape[2], data.shape[1])
        self._dst.write(data, window=window)
        self._next_row += data.shape[1]

    def close(self) -> None:
        if self._pending_rows:
            self._write(np.concatenate(self._pending, axis=1))
            self._pending, self._pending_rows = [], 0
        self._dst.close()

    def discard(self) -> None:
        if not self._dst.closed:
            self._dst.close()
        self.tmp.unlink(missing_ok=True)


def mask_profile(source: RasterSource, num_bands: int, dtype: str, nodata: int | None) -> dict[str, Any]:
    """The output profile: the input's grid (size, CRS, transform), tiled, compressed, BigTIFF if needed."""
    profile = {
        "driver": "GTiff",
        "width": source.width,
        "height": source.height,
        "count": num_bands,
        "dtype": dtype,
        "crs": source.crs,
        "transform": source.transform,
        "tiled": True,
        "blockxsize": OUTPUT_BLOCK,
        "blockysize": OUTPUT_BLOCK,
        # ZSTD level 1: as small as DEFLATE's default on class masks, 6x faster to write (docs/benchmarks.md);
        # GDAL (so QGIS, rasterio) reads it; --cog gives DEFLATE for readers without ZSTD
        "compress": "zstd",
        "zstd_level": 1,
        "BIGTIFF": "IF_SAFER",
        "interleave": "band",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    return profile


def write_class_colours(dst, spec: ModelSpec) -> None:
    """The colour table of a uint8 mask, before its first row: GDAL sets the file's photometric interpretation
    (palette) with it, which it can no longer change once data is written."""
    if dst.dtypes[0] == "uint8":
        dst.write_colormap(1, {c.index: (*c.rgb, 255) for c in spec.classes if c.index < 255})


def write_class_metadata(dst, spec: ModelSpec, tags: dict[str, str]) -> None:
    """Class names and provenance tags on a finished mask (its colours: :func:`write_class_colours`)."""
    dst.set_band_description(1, "class")
    dst.update_tags(1, CLASSES=json.dumps([{"index": c.index, "name": c.name, "color": c.color} for c in spec.classes]))
    dst.update_tags(**tags)


def to_cog(path: Path) -> None:
    """Rewrite a finished GeoTIFF as a Cloud Optimized GeoTIFF with overviews (nearest: class indices)."""
    cog = path.with_name(path.name + ".cog")
    try:
        rasterio.shutil.copy(
            path,
            cog,
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=512,
            BIGTIFF="IF_SAFER",
            OVERVIEW_RESAMPLING="NEAREST",
        )
        os.replace(cog, path)
    finally:
        cog.unlink(missing_ok=True)


__all__ = ["StripWriter", "mask_profile", "to_cog", "write_class_colours", "write_class_metadata"]
