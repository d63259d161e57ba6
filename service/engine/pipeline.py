"""The overlap-tile engine: any-size raster in, seamless mask GeoTIFF out. No HTTP in here.

The pipeline, each step a small piece of its own:

1. plan the tiles (:mod:`tileseg.engine.tiling`);
2. read windows, mirror-padded and normalised, a batch at a time, in reader threads that run ahead of
   the network (:mod:`tileseg.engine.io`); tiles that are wholly nodata are skipped;
3. run each batch, reduced to the winning channel per pixel on the device (:mod:`tileseg.engine.batches`);
4. stitch cores, or blend windows, into finished rows (:mod:`tileseg.engine.stitching`), through one
   interface for every blend mode: each tile's prediction is aggregated, then the stitcher is finalized;
5. write the rows in a writer thread, block-aligned, to a temporary file renamed into place at the end.

Memory is bounded by the batch, the readers' lead and one band of tile rows: never by the image.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from tileseg import models
from tileseg.engine.batches import BatchRunner
from tileseg.engine.io.inputs import open_input
from tileseg.engine.io.read import ALLOWED_DRIVERS, gdal_env
from tileseg.engine.io.source import RasterSource
from tileseg.engine.options import SegmentOptions
from tileseg.engine.outputs import (
    check_outputs,
    keeps_probabilities,
    make_sinks,
    object_bytes_per_pixel,
    object_counts,
    provenance_tags,
)
from tileseg.engine.prediction import TilePrediction
from tileseg.engine.readplan import read_plan
from tileseg.engine.resolution import pixel_size_warnings
from tileseg.engine.results import SegmentResult, runtime_report
from tileseg.engine.runtime.device import pick_device
from tileseg.engine.runtime.memory import release_free_memory
from tileseg.engine.runtime.tuner import choose_runtime
from tileseg.engine.sinks import write_all
from tileseg.engine.stitching import Strip, build_stitcher
from tileseg.engine.tiling import Tile, TileBand, TilePlan, tile_settings
from tileseg.engine.zarr.sink import check_zarr_paths, is_zarr_path
from tileseg.models.base import SegmentationNet
from tileseg.models.spec import BlendMode

Progress = Callable[[int, int], None]  # (tiles done, tiles total); raising from it stops the run


def segment(
    model: SegmentationNet,
    source: str | os.PathLike,
    output: str | os.PathLike,
    options: SegmentOptions = SegmentOptions(),
    probabilities: str | os.PathLike | None = None,
    progress: Progress | None = None,
    allowed_drivers: frozenset[str] = ALLOWED_DRIVERS,
    max_pixels: int | None = None,
    vectors: str | os.PathLike | None = None,
    instances: str | os.PathLike | None = None,
    objects: str | os.PathLike | None = None,
) -> SegmentResult:
    """Segment the raster at ``source`` into a class-index GeoTIFF at ``output`` (OME-Zarr when it ends in
    ``.zarr``: :mod:`tileseg.engine.zarr.sink`).

    Args:
        model: a network from :func:`tileseg.models.load` (it carries its ``.spec``), on the device to run on.
        source: any raster GDAL reads (GeoTIFF/BigTIFF/COG, PNG, JPEG, Aperio SVS level 0), local or at an
            ``s3://`` or ``http(s)://`` URL, or a STAC item (``options.asset``, ``options.bands`` by common name),
            or a Zarr array or OME-Zarr image (:mod:`tileseg.engine.io.zarr_raster`).
        output: the mask to write; it appears only when complete.
        options: tiling, bands, flips, precision (see :class:`SegmentOptions`).
        probabilities: where to write per-class probabilities (uint8, 0..255), or None.
        progress: called with (tiles done, tiles total) after each batch; raise from it to cancel.
        allowed_drivers: the GDAL drivers an input may be read with.
        max_pixels: the largest input accepted (width x height), or None for any.
        vectors: where to write the polygons of the mask's regions (:mod:`tileseg.engine.vectors.sink`; the suffix
            says the format), made in the same pass, or None. With an instance model: one feature per object.
        instances: where to write the objects' uint32 label GeoTIFF (an instance model only), or None.
        objects: where to write the objects' table (``.csv`` or ``.parquet``; an instance model only), or None.

    Raises:
        TilesegError: a subclass of it for anything the caller can fix (input, bands, dtype, tile settings).
    """
    started = time.perf_counter()
    spec, device = model.spec, next(model.parameters()).device
    check_outputs(spec, vectors, instances, objects)  # before any work
    keep_probabilities = keeps_probabilities(spec, probabilities, instances, objects, vectors)
    if is_zarr_path(output) or is_zarr_path(probabilities):
        check_zarr_paths(output, probabilities, options.cog)  # before any work
    # the thread that reads in turn decodes with the network's threads, which wait on it (reader_threads)
    decode = torch.get_num_threads()
    with (
        gdal_env(),
        open_input(source, spec, options.bands, allowed_drivers, max_pixels, options.asset, decode) as full,
    ):
        with read_plan(full, spec, options) as plan:
            src = plan.source
            held = object_bytes_per_pixel(spec, instances, objects, vectors)
            choice = choose_runtime(model, device, options, src.height * src.width, src.width, keep_probabilities, held)
            settings = tile_settings(spec, options, (src.height, src.width), choice)
            runner = BatchRunner(model, settings, src.scaling, device, choice.runtime, options.tta, keep_probabilities)
            tags = provenance_tags(model, plan, options, runtime_report(settings, choice.runtime, choice, device))
            sinks = make_sinks(plan, spec, options, Path(output), probabilities, vectors, instances, objects)
            counts = TileCounts()
            readers = reader_threads(options.readers, full, device)
            write_all(sinks, plan.output_strips(predict_strips(runner, src, counts, readers, progress)), tags)
            pixels = plan.pixels_read()
    # after the run: the runner falls back to eager fp32 when its runtime fails mid-run
    runtime = runtime_report(settings, runner.runtime, choice, device)
    seconds = time.perf_counter() - started
    return SegmentResult(
        output=Path(output),
        probabilities=Path(probabilities) if probabilities else None,
        input=full.info,
        tiles_total=counts.total,
        tiles_skipped=counts.skipped,
        seconds=seconds,
        runtime=runtime,
        pixel_size=plan.resolution.report(pixels),
        warnings=pixel_size_warnings(plan.resolution, spec),
        roi=plan.roi.report(counts.total, counts.skipped, seconds) if plan.roi else None,
        vectors=Path(vectors) if vectors is not None else None,
        instances=Path(instances) if instances is not None else None,
        objects_table=Path(objects) if objects is not None else None,
        objects=object_counts(sinks),
    )


@dataclass
class TileCounts:
    total: int = 0
    done: int = 0
    skipped: int = 0


def predict_strips(
    runner: BatchRunner,
    src: RasterSource,
    counts: TileCounts | None = None,
    readers: int = 0,
    progress: Progress | None = None,
    tile_rows: range | None = None,
) -> Iterator[Strip]:
    """Tile ``src``, run every batch through ``runner`` and yield the stitched output rows in order.

    This is the engine's loop, the same for every blend mode: split into batches -> run -> aggregate each
    tile's prediction -> finalize. :func:`segment` adds the writing.

    Args:
        runner: the network, ready to run batches at the run's tile settings.
        src: the input.
        counts: updated as tiles go (total, done, skipped), or None.
        readers: threads reading windows ahead of the network (0: read in turn, in this thread; see
            :func:`reader_threads`).
        progress: called with (tiles done, tiles total) before the first batch and after each.
        tile_rows: run only these tile rows of the image's plan (a shard: crop mode only, where each tile
            row's strip depends on its own tiles alone), or None for all.

    Yields:
        The finished strips, top to bottom; together they cover the image once (or the band's rows once).
    """
    settings, num_classes = runner.settings, runner.model.spec.num_classes
    plan = TilePlan(settings, src.height, src.width)
    if tile_rows is not None:
        if settings.blend is not BlendMode.CROP:
            raise ValueError("a band of tile rows is exact only in crop mode")
        plan = TileBand(settings, src.height, src.width, tile_rows.start, tile_rows.stop)
    counts = counts if counts is not None else TileCounts()
    counts.total = len(plan)
    index_dtype = np.uint8 if num_classes <= 256 else np.int16
    stitcher = build_stitcher(plan, num_classes, runner.gives_probabilities, index_dtype)
    if progress:
        progress(0, counts.total)
    for tiles, active, batch in _prefetch(lambda b: _read_batch(src, plan, b), _batches(plan, settings.batch), readers):
        counts.skipped += len(tiles) - len(active)
        for tile, prediction in _predict(runner, tiles, active, batch):
            strip = stitcher.aggregate(tile, prediction)
            if strip is not None:
                release_free_memory()  # once a tile row: peak memory must not grow with the image
                yield strip
        counts.done += len(tiles)
        if progress:
            progress(counts.done, counts.total)
    rest = stitcher.finalize()
    if rest is not None:
        yield rest


def _predict(
    runner: BatchRunner, tiles: list[Tile], active: list[Tile], batch: np.ndarray | None
) -> list[tuple[Tile, TilePrediction | None]]:
    """Each tile of a batch with its prediction: None for the tiles left out of ``batch`` as wholly nodata."""
    predictions = runner(batch) if active and batch is not None else None
    position = {tile.index: i for i, tile in enumerate(active)}
    return [
        (tile, predictions[position[tile.index]] if predictions is not None and tile.index in position else None)
        for tile in tiles
    ]


def _batches(plan: TilePlan, size: int) -> Iterator[list[Tile]]:
    tiles = iter(plan)
    while batch := list(islice(tiles, size)):
        yield batch


def _read_batch(
    src: RasterSource, plan: TilePlan, tiles: list[Tile]
) -> tuple[list[Tile], list[Tile], np.ndarray | None]:
    """Windows of the tiles that have valid pixels, stacked; wholly-nodata tiles are left out."""
    length = plan.settings.window
    active, windows = [], []
    for tile in tiles:
        valid = src.read_valid(tile.y, tile.x, tile.height, tile.width)
        if valid is not None and not valid.any():
            continue
        active.append(tile)
        windows.append(src.read_window(*plan.window_origin(tile), length))
    if len(windows) == 1:  # a batch of one: the window itself, without a copy
        return tiles, active, windows[0][np.newaxis]
    return tiles, active, np.stack(windows) if windows else None


def reader_threads(asked: int | None, source: RasterSource, device: torch.device) -> int:
    """The reader threads of a run: as ``asked`` (``--readers``), else 0 for a local file on a CPU and 2
    otherwise. On a CPU the network's threads take every core, and a reader decoding beside them holds one back
    from every parallel step of the forward: on the 2-core machine of the benchmarks, 8192² of unet-aerial took
    9.9 s with two readers ahead and 8.6 s reading in turn. Reading in turn, the run's own thread decodes a
    GeoTIFF's blocks with the network's threads, idle meanwhile (``decode_threads``: reads 0.65 → 0.50 s of a
    6.2-s 8192² run). A remote source waits on the network, not the CPU,
    and a GPU leaves the CPU free: there reading ahead pays."""
    if asked is not None:
        return asked
    local = isinstance(getattr(source, "path", None), Path)
    return 0 if local and device.type == "cpu" else 2


def _prefetch(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` in order, computed by ``workers`` threads running up to ``2 * workers`` ahead
    (0: in the caller's thread, one at a time)."""
    if workers <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tileseg-read") as pool:
        pending: deque = deque()
        items = iter(items)
        try:
            for item in islice(items, 2 * max(1, workers)):
                pending.append(pool.submit(fn, item))
            while pending:
                result = pending.popleft().result()
                for item in islice(items, 1):
                    pending.append(pool.submit(fn, item))
                yield result
        finally:
            for future in pending:
                future.cancel()


def run_file(
    name_or_path: str,
    source,
    output,
    options: SegmentOptions = SegmentOptions(),
    device: str = "auto",
    probabilities=None,
    progress: Progress | None = None,
    vectors=None,
    instances=None,
    objects=None,
) -> SegmentResult:
    """Load a model (with ``options.prune``) and segment one file: what ``tileseg segment`` does."""
    check_outputs(models.card_spec(name_or_path), vectors, instances, objects)  # before loading the model
    model_options = {"prune": options.prune} if options.prune is not None else {}
    model = models.load(name_or_path, device=pick_device(device), **model_options)
    return segment(
        model, source, output, options, probabilities, progress, vectors=vectors, instances=instances, objects=objects
    )


__all__ = ["Progress", "TileCounts", "predict_strips", "reader_threads", "run_file", "segment"]
