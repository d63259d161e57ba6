"""Sinks: where the finished strips of a run go, all fed the same strips by the pipeline.

Every sink has four calls: :meth:`Sink.put` takes each strip in order, :meth:`Sink.finish` completes the
output beside its target, :meth:`Sink.commit` renames it into place, and :meth:`Sink.discard` removes what
was written. The pipeline finishes every sink before it commits any, so a failed run leaves no file at all.

* :class:`MaskSink`: the class-index GeoTIFF (and, if asked, the probabilities), with the input's nodata
  applied from the validity mask that travels in each strip (the input is never read again here);
* :class:`tileseg.engine.vectors.sink.VectorSink`: the polygons of the same class indices.

:class:`BackgroundWriter` feeds the sinks in a writer thread beside the network; :func:`write_all` runs a
run's strips through it.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tileseg.engine.io.write import StripWriter, mask_profile, to_cog, write_class_colours, write_class_metadata
from tileseg.engine.stitching import Strip
from tileseg.models.spec import ModelSpec


def probability_bytes(strip: Strip) -> np.ndarray:
    """A strip's per-class probabilities as bytes (0..255), 0 where the input has no data."""
    scaled = np.rint(strip.probabilities * 255).astype(np.uint8)
    if strip.valid is not None:
        scaled *= strip.valid[None]
    return scaled


class Sink(Protocol):
    """Where finished strips go (see the module's docstring for the order of the calls)."""

    def put(self, strip: Strip) -> None:
        """Take the next strip, top to bottom."""

    def finish(self, tags: dict[str, str]) -> None:
        """Complete the output beside its target (``tags``: the run's provenance, for those that keep it)."""

    def commit(self) -> None:
        """Rename the finished output into place."""

    def discard(self) -> None:
        """Remove what was written (a failed or canceled run)."""


@dataclass(frozen=True)
class ClassIndices:
    """How a strip's labels (the network's channels) become the mask's values: the card's class index of
    each channel, and ``nodata`` where the strip's validity mask says the input has none.

    Attributes:
        dtype: uint8, or uint16 past 255 classes.
        nodata: the dtype's maximum.
        lut: channel -> class index, or None where they are equal.
    """

    dtype: np.dtype
    nodata: int
    lut: np.ndarray | None

    @classmethod
    def of(cls, spec: ModelSpec) -> ClassIndices:
        """The mapping of a model's card."""
        wide = max(c.index for c in spec.classes) >= 255
        dtype, nodata = (np.dtype("uint16"), 65535) if wide else (np.dtype("uint8"), 255)
        indices = np.array([c.index for c in spec.classes])
        lut = None if np.array_equal(indices, np.arange(len(indices))) else indices.astype(dtype)
        return cls(dtype, nodata, lut)

    def __call__(self, strip: Strip) -> np.ndarray:
        """The ``(height, width)`` class indices of ``strip``, nodata applied."""
        # the stitchers give the network's channel per pixel; the card says which class index each one writes
        classes = strip.labels.astype(self.dtype, copy=False)
        if self.lut is not None:
            classes = self.lut[strip.labels]
        if strip.valid is not None:
            classes = np.where(strip.valid, classes, self.dtype.type(self.nodata))
        return classes


class RasterFiles:
    """A mask file and, if asked, a probabilities file, written to temporary names: ``commit`` renames them into
    place, ``discard`` removes them. What every sink that writes rasters shares."""

    mask: StripWriter
    probs: StripWriter | None

    def commit(self) -> None:
        for writer in self._writers():
            os.replace(writer.tmp, writer.path)

    def discard(self) -> None:
        for writer in self._writers():
            writer.discard()

    def _writers(self) -> list[StripWriter]:
        return [self.mask] if self.probs is None else [self.mask, self.probs]


class MaskSink(RasterFiles):
    """The mask GeoTIFF of a run and, if asked, its probabilities (uint8, 0..255, zero where nodata).

    Args:
        grid: the output's grid (``height``, ``width``, ``crs``, ``transform``).
        spec: the model's spec (classes, colours).
        output: the mask to write.
        probabilities: where to write the probabilities, or None.
        cog: rewrite the finished files as Cloud Optimized GeoTIFFs.
    """

    def __init__(self, grid, spec: ModelSpec, output: Path, probabilities, cog: bool = False):
        self.spec, self.cog = spec, cog
        self.indices = ClassIndices.of(spec)
        dtype, nodata = self.indices.dtype.name, self.indices.nodata
        output.parent.mkdir(parents=True, exist_ok=True)
        self.mask = StripWriter(output, mask_profile(grid, 1, dtype, nodata))
        write_class_colours(self.mask.dataset, spec)
        self.probs = None
        if probabilities is not None:
            Path(probabilities).parent.mkdir(parents=True, exist_ok=True)
            self.probs = StripWriter(probabilities, mask_profile(grid, spec.num_classes, "uint8", None))

    def put(self, strip: Strip) -> None:
        self.mask.write_rows(self.indices(strip)[None])
        if self.probs is not None:
            self.probs.write_rows(probability_bytes(strip))

    def finish(self, tags: dict[str, str]) -> None:
        write_class_metadata(self.mask.dataset, self.spec, tags)
        self.mask.close()
        if self.probs is not None:
            self.probs.dataset.update_tags(**tags)
            for k, c in enumerate(self.spec.classes):
                self.probs.dataset.set_band_description(k + 1, f"p({c.name})")
            self.probs.close()
        for writer in self._writers():
            if self.cog:
                to_cog(writer.tmp)


class BackgroundWriter:
    """A thread that puts strips into the sinks while the network runs; its errors surface in the caller."""

    def __init__(self, sinks: Sequence[Sink]):
        self.sinks = sinks
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
                    for sink in self.sinks:
                        sink.put(strip)
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


def write_all(sinks: Sequence[Sink], strips: Iterable[Strip], tags: dict[str, str]) -> None:
    """Put every strip into every sink, finish them all, then commit them all; a failure removes what was
    written. Put the sink likelier to fail first: it is finished first."""
    try:
        with BackgroundWriter(sinks) as writer:
            for strip in strips:
                writer.put(strip)
        for sink in sinks:
            sink.finish(tags)
        for sink in sinks:
            sink.commit()
    except BaseException:
        for sink in sinks:
            sink.discard()
        raise


__all__ = ["BackgroundWriter", "ClassIndices", "MaskSink", "RasterFiles", "Sink", "probability_bytes", "write_all"]
