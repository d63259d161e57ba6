"""Writing the mask: finished rows in, a complete GeoTIFF out, or nothing.

Rows arrive in order from the stitcher. A :class:`MaskSink` applies the input's nodata and writes the class
indices (and, if asked, the probabilities) in block-aligned strips, in a writer thread that runs beside the
network (:class:`BackgroundWriter`), to a temporary file beside the target. :meth:`MaskSink.finish` adds
the colour table and provenance tags, optionally rewrites the file as a Cloud Optimized GeoTIFF, and renames
it into place; :meth:`MaskSink.discard` removes it. A failed run never leaves a partial file.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from tileseg.engine.io.read import OUTPUT_BLOCK, InputRaster
from tileseg.engine.stitching import Strip
from tileseg.engine.vectors import VectorSink
from tileseg.models.spec import ModelSpec


class StripWriter:
    """Writes full-width rows of a raster in order, in strips aligned to the output blocks.

    The rows go to a temporary file beside ``path`` (``tmp``); :meth:`close` completes it and the owner renames
    it into place (:meth:`MaskSink.finish`), or :meth:`discard` removes it, so a failed run never leaves a
    partial file.
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


def mask_profile(source: InputRaster, num_bands: int, dtype: str, nodata: int | None) -> dict[str, Any]:
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
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
        "interleave": "band",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    return profile


def write_class_metadata(dst, spec: ModelSpec, tags: dict[str, str]) -> None:
    """Colour table, class names and provenance tags on a finished mask."""
    if dst.dtypes[0] == "uint8":
        dst.write_colormap(1, {c.index: (*c.rgb, 255) for c in spec.classes if c.index < 255})
    dst.set_band_description(1, "class")
    dst.update_tags(1, CLASSES=json.dumps([{"index": c.index, "name": c.name, "color": c.color} for c in spec.classes]))
    dst.update_tags(**tags)


class MaskSink:
    """Where finished strips go: the mask and, if asked, the probabilities and the polygons
    (:class:`tileseg.engine.vectors.VectorSink`, fed the same class indices), with the input's nodata applied."""

    def __init__(
        self,
        src: InputRaster,
        spec: ModelSpec,
        output: Path,
        probabilities,
        dtype: str,
        nodata: int,
        vectors: VectorSink | None = None,
    ):
        self.src = src
        self.vectors = vectors
        self.nodata = nodata
        self.dtype = np.dtype(dtype)
        indices = np.array([c.index for c in spec.classes])
        self.lut = None if np.array_equal(indices, np.arange(len(indices))) else indices.astype(self.dtype)
        output.parent.mkdir(parents=True, exist_ok=True)
        self.mask = StripWriter(output, mask_profile(src, 1, dtype, nodata))
        self.probs = None
        if probabilities is not None:
            Path(probabilities).parent.mkdir(parents=True, exist_ok=True)
            self.probs = StripWriter(probabilities, mask_profile(src, spec.num_classes, "uint8", None))

    def write(self, strip: Strip) -> None:
        # the stitchers give the network's channel per pixel; the card says which class index each one writes
        classes = strip.labels.astype(self.dtype, copy=False)
        if self.lut is not None:
            classes = self.lut[strip.labels]
        valid = self.src.read_valid(strip.y, 0, strip.height, self.src.width)
        if valid is not None:
            classes = np.where(valid, classes, self.dtype.type(self.nodata))
        self.mask.write_rows(classes[None])
        if self.vectors is not None:
            self.vectors.write(strip.y, classes, strip.probabilities)
        if self.probs is not None:
            scaled = np.rint(strip.probabilities * 255).astype(np.uint8)
            if valid is not None:
                scaled *= valid[None]
            self.probs.write_rows(scaled)

    def finish(self, tags: dict[str, str], spec: ModelSpec, cog: bool) -> None:
        if self.vectors is not None:  # first: it is the likelier to fail; every file is renamed at the end
            self.vectors.finish()
        write_class_metadata(self.mask.dataset, spec, tags)
        self.mask.close()
        writers = [self.mask]
        if self.probs is not None:
            self.probs.dataset.update_tags(**tags)
            for c in spec.classes:
                self.probs.dataset.set_band_description(spec.classes.index(c) + 1, f"p({c.name})")
            self.probs.close()
            writers.append(self.probs)
        for writer in writers:
            if cog:
                to_cog(writer.tmp)
        if self.vectors is not None:
            self.vectors.commit()
        for writer in writers:
            os.replace(writer.tmp, writer.path)

    def discard(self) -> None:
        self.mask.discard()
        if self.vectors is not None:
            self.vectors.discard()
        if self.probs is not None:
            self.probs.discard()


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


class BackgroundWriter:
    """A thread that writes strips while the network runs; its errors surface in the caller."""

    def __init__(self, sink: MaskSink):
        self.sink = sink
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tileseg-write", daemon=True)

    def __enter__(self) -> BackgroundWriter:
        self.thread.start()
        return self

    def _run(self) -> None:
        while (strip := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.sink.write(strip)
                except BaseException as err:  # handed to the caller, which re-raises it
                    self.error = err

    def put(self, strip: Strip) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(strip)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and exc is None:
            raise self.error


__all__ = ["BackgroundWriter", "MaskSink", "StripWriter", "mask_profile", "to_cog", "write_class_metadata"]
