"""Shards: one image across several processes (or GPUs), with the single-process mask exactly.

A run's tile plan is cut into *shards*: bands of whole tile rows (:func:`plan_shards`). Each shard runs in a
process of its own (:func:`run_shards`) over its band of the plan (:class:`tileseg.engine.pipeline.TileBand`):
its tiles keep their place in the whole image's grid and read their windows, halo included, from the real
image, with mirror padding only at the image's true border. So every core a shard computes is the core a
single run computes, and the union of the shards' rows is the single-process mask, exactly. This holds in
crop mode only: blended modes weight windows that overlap across tile rows, so they are refused here.

The window must be the same in every shard (another core moves the seams between cores): the parent chooses
the runtime, core and batch once (the tuner) and hands the same fixed choice to every shard.

Each shard writes its rows to shard files in a folder beside the output (the class indices, nodata applied,
and, if asked, float32 probabilities). The assembly (:func:`assembled_strips`) then streams the shard files
in order, one tile row at a time, into the very sinks a single run uses (mask GeoTIFF or COG, probabilities,
polygons), so memory follows a tile row, never the image. Polygons are made from the assembled rows by the
run's own polygonizer: an object crossing a shard seam is one feature, and the vector file is the one a single
run writes. (The alternative, each shard reporting its open regions for a merge across seams, saves one pass
of polygonizing in one process; it was not needed for exactness, and polygonizing streams at a small fraction
of the network's time.) The shard files are deleted whether the run succeeds or fails.

This module holds a shard's own work and the processes of one machine; the plan, the assembly and the
one-machine entry point (``tileseg segment --workers``) built from them are :mod:`tileseg.engine.shards.plan`.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queues
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from tileseg.engine.batches import BatchRunner
from tileseg.engine.errors import OptionsError
from tileseg.engine.io.inputs import open_input
from tileseg.engine.io.read import ALLOWED_DRIVERS, gdal_env
from tileseg.engine.io.write import StripWriter, mask_profile
from tileseg.engine.options import SegmentOptions
from tileseg.engine.pipeline import Progress, TileCounts, predict_strips, reader_threads
from tileseg.engine.readplan import ReadPlan, read_plan
from tileseg.engine.runtime.device import configure_threads, pick_device
from tileseg.engine.runtime.runtimes import Runtime
from tileseg.engine.sinks import ClassIndices, RasterFiles, write_all
from tileseg.engine.stitching import Strip
from tileseg.engine.tiling import TileSettings
from tileseg.errors import TilesegError
from tileseg.models.base import SegmentationNet
from tileseg.models.spec import BlendMode, ModelSpec

POLL_SECONDS = 0.25  # how often the parent looks at its shards' processes between their messages


class ShardError(TilesegError, RuntimeError):
    """A shard of a sharded run failed (its reason in the message); the run published nothing."""

    code = "shard_failed"


def plan_shards(tile_rows: int, count: int) -> list[range]:
    """Up to ``count`` bands of consecutive tile rows covering ``tile_rows`` rows, as even as they can be (the
    first ones one row longer); fewer when there are fewer rows than shards."""
    count = max(1, min(count, tile_rows))
    base, extra = divmod(tile_rows, count)
    bands, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        bands.append(range(start, stop))
        start = stop
    return bands


@dataclass(frozen=True)
class ShardJob:
    """What one shard's process needs: the model (on the CPU, moved to ``device`` there), the input, and the
    parent's fixed tile settings and runtime.

    Attributes:
        index, count: this shard's place among the run's shards.
        rows: the band of tile rows of the whole image's plan that this shard runs.
        threads: the torch threads of this shard's process (its share of the cores).
        folder: where the shard files go.
    """

    index: int
    count: int
    rows: range
    model: SegmentationNet
    device: str
    threads: int
    source: str
    options: SegmentOptions
    settings: TileSettings
    runtime: Runtime
    folder: Path
    probabilities: bool
    cols: int
    allowed_drivers: frozenset[str] = ALLOWED_DRIVERS
    max_pixels: int | None = None

    @property
    def first_row(self) -> int:
        """The first image row of the band."""
        return self.rows.start * self.settings.step


@dataclass(frozen=True)
class ShardResult:
    """A finished shard: the image rows ``y .. y + height`` in ``mask`` (and ``probabilities``)."""

    index: int
    y: int
    height: int
    mask: str | Path  # any path rasterio opens
    probabilities: str | Path | None
    tiles_total: int
    tiles_skipped: int
    seconds: float
    runtime: str


@dataclass(frozen=True)
class _BandGrid:
    """A shard file's grid: the band's rows, no place on the map (the assembly gives the output its own)."""

    height: int
    width: int
    crs: None = None
    transform: Affine = field(default_factory=Affine.identity)


class ShardSink(RasterFiles):
    """A shard's rows as a sink: class indices (nodata applied) and, if asked, float32 probabilities (the
    network's own values, so that the assembly scales them exactly as a single run does)."""

    def __init__(self, folder: Path, index: int, height: int, width: int, spec: ModelSpec, probabilities: bool):
        self.indices = ClassIndices.of(spec)
        grid = _BandGrid(height, width)
        profile = mask_profile(grid, 1, self.indices.dtype.name, self.indices.nodata)
        self.mask = StripWriter(folder / f"shard-{index:04d}.tif", profile)
        self.probs = None
        if probabilities:
            profile = mask_profile(grid, spec.num_classes, "float32", None)
            self.probs = StripWriter(folder / f"shard-{index:04d}.probabilities.tif", profile)

    def put(self, strip: Strip) -> None:
        self.mask.write_rows(self.indices(strip)[None])
        if self.probs is not None:
            self.probs.write_rows(strip.probabilities)

    def finish(self, tags: dict[str, str]) -> None:
        for writer in self._writers():
            writer.close()


def run_shard(job: ShardJob, progress: Progress | None = None) -> ShardResult:
    """Run one shard in this process: its band of tile rows, written to its shard files in ``job.folder``.

    Raises:
        TilesegError subclasses for an input this process cannot read as the parent did.
    """
    started = time.perf_counter()
    device = pick_device(job.device)
    model = job.model.to(device)
    spec, counts = model.spec, TileCounts()
    with (
        gdal_env(),
        open_input(job.source, spec, job.options.bands, job.allowed_drivers, job.max_pixels, job.options.asset) as full,
    ):
        with read_plan(full, spec, job.options) as plan:
            src = plan.source
            runner = BatchRunner(
                model, job.settings, src.scaling, device, job.runtime, job.options.tta, job.probabilities
            )
            y = job.first_row
            height = min(src.height, job.rows.stop * job.settings.step) - y
            sink = ShardSink(job.folder, job.index, height, src.width, spec, job.probabilities)
            readers = reader_threads(job.options.readers, full, device)
            strips = predict_strips(runner, src, counts, readers, progress, tile_rows=job.rows)
            write_all([sink], plan.output_strips(strips), {})
    return ShardResult(
        index=job.index,
        y=y,
        height=height,
        mask=sink.mask.path,
        probabilities=sink.probs.path if sink.probs is not None else None,
        tiles_total=counts.total,
        tiles_skipped=counts.skipped,
        seconds=time.perf_counter() - started,
        runtime=runner.runtime.label,
    )


def _shard_process(job: ShardJob, messages) -> None:
    """A shard's process: run it and tell the parent how it goes (progress, its result or its failure)."""
    try:
        configure_threads(job.threads)
        result = run_shard(job, lambda done, total: messages.put(("progress", job.index, done)))
    except BaseException as err:  # every failure goes back to the parent, which fails the run with it
        reason = str(err) if isinstance(err, TilesegError) else f"{type(err).__name__}: {err}"
        messages.put(("failed", job.index, reason))
        raise SystemExit(1) from None
    messages.put(("done", job.index, result))


def run_shards(jobs: Sequence[ShardJob], progress: Progress | None = None) -> list[ShardResult]:
    """Run every shard in a process of its own (started with ``spawn``: no state of this process is copied)
    and wait for them all.

    Args:
        jobs: the shards.
        progress: called with (tiles done, tiles total) over all shards as they go; raise from it to cancel.

    Returns:
        The shards' results, in order.

    Raises:
        ShardError: a shard failed, or its process died; the other shards are stopped.
    """
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    processes = {job.index: context.Process(target=_shard_process, args=(job, messages), daemon=True) for job in jobs}
    by_index = {job.index: job for job in jobs}
    done: dict[int, int] = {job.index: 0 for job in jobs}
    results: dict[int, ShardResult] = {}
    total = sum(job_tiles(job) for job in jobs)
    try:
        for process in processes.values():
            process.start()
        if progress:
            progress(0, total)
        while len(results) < len(jobs):
            try:
                kind, index, value = messages.get(timeout=POLL_SECONDS)
            except queues.Empty:
                _check_alive(processes, results, messages, by_index)
                continue
            if kind == "failed":
                raise ShardError(f"{describe(by_index[index])} failed: {value}")
            if kind == "done":
                results[index] = value
                done[index] = value.tiles_total
            else:
                done[index] = value
            if progress:
                progress(sum(done.values()), total)
    finally:
        for process in processes.values():
            if process.is_alive():
                process.terminate()
        for process in processes.values():
            if process.pid is not None:
                process.join()
        messages.close()
    return [results[job.index] for job in jobs]


def job_tiles(job: ShardJob) -> int:
    """The tiles of a shard: its tile rows times the plan's columns."""
    return len(job.rows) * job.cols


def describe(job: ShardJob) -> str:
    """``shard 2 of 3 (tile rows 4-7)``: how errors name a shard."""
    return f"shard {job.index + 1} of {job.count} (tile rows {job.rows.start}-{job.rows.stop - 1})"


def _check_alive(processes, results, messages, jobs) -> None:
    """Fail the run when a shard's process ended without a word (killed, out of memory)."""
    for index, process in processes.items():
        if index in results or process.exitcode is None:
            continue
        try:  # its last message may still be in the pipe
            kind, sender, value = messages.get(timeout=1.0)
        except queues.Empty:
            raise ShardError(f"{describe(jobs[index])}: its process died (exit code {process.exitcode})") from None
        if kind == "failed":
            raise ShardError(f"{describe(jobs[sender])} failed: {value}")
        messages.put((kind, sender, value))  # not this one's: hand it back to the main loop
        return


def assembled_strips(results: Sequence[ShardResult], spec: ModelSpec, step: int) -> Iterator[Strip]:
    """The shards' rows as the strips a single run makes: ``step`` rows at a time (a tile row), the network's
    channel per pixel, the validity that the shard applied as nodata, and the probabilities if written.

    Args:
        results: the finished shards, top to bottom; each starts on a tile row.
        spec: the model's spec (class index -> channel).
        step: the tile step: the height of a single run's strips, so the sinks see the very same strips.
    """
    indices = ClassIndices.of(spec)
    channel = np.zeros(indices.nodata + 1, np.int64)  # a shard file's class index -> the network's channel
    for k, info in enumerate(spec.classes):
        channel[info.index] = k
    label_dtype = np.uint8 if spec.num_classes <= 256 else np.int16  # what predict_strips gives
    for result in results:
        with ExitStack() as files:
            mask = files.enter_context(rasterio.open(result.mask))
            probs = files.enter_context(rasterio.open(result.probabilities)) if result.probabilities else None
            for top in range(0, result.height, step):
                window = Window(0, top, mask.width, min(step, result.height - top))
                classes = mask.read(1, window=window)
                valid = classes != indices.nodata
                yield Strip(
                    result.y + top,
                    channel[classes].astype(label_dtype),
                    probs.read(window=window) if probs is not None else None,
                    None if valid.all() else valid,
                )


def parse_devices(devices: Sequence[str]) -> list[str]:
    """The devices of a sharded run, each checked (``cpu``, ``cuda``, ``cuda:1``...).

    Raises:
        OptionsError: none given, or one this machine does not have.
    """
    names = [d.strip() for d in devices if d.strip()]
    if not names:
        raise OptionsError("devices: give at least one, e.g. cuda:0,cuda:1 or cpu,cpu")
    for name in names:
        device = pick_device(name)
        if device.type == "cuda" and (device.index or 0) >= _cuda_count():
            raise OptionsError(f"devices: {name} is not one of this machine's {_cuda_count()} CUDA devices")
    return names


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def check_shardable(plan: ReadPlan, spec: ModelSpec, options: SegmentOptions) -> None:
    """Refuse what shards cannot make exactly.

    Raises:
        OptionsError: a blended mode; a mask written on another grid than the one the model reads.
    """
    blend = options.blend or spec.geometry.blend
    if blend is not BlendMode.CROP:
        raise OptionsError(
            f"shards: {blend.value} blending weights windows across tile rows, so shards would not be exact; "
            "use blend crop (--blend crop; for a translation-equivariant model) or run in one process"
        )
    src, target = plan.source, plan.target
    if (src.height, src.width) != (target.height, target.width):
        raise OptionsError(
            "shards: this run reads a resampled grid and writes the mask on the input's; shards need them equal: "
            "use output grid model or pixel size policy native (--output-grid model, --pixel-size-policy native; "
            "output_grid=model, pixel_size_policy=native in a job), or run in one process"
        )


def cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


__all__ = [
    "ShardError",
    "ShardJob",
    "ShardResult",
    "assembled_strips",
    "cores",
    "check_shardable",
    "parse_devices",
    "plan_shards",
    "run_shard",
    "run_shards",
]
