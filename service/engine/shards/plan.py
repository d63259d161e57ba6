"""Shards run apart: planned once, each run by any process on any machine, assembled by one of them.

The three steps stand alone, for callers that spread them over machines and time (the service's queue
workers, :mod:`tileseg.jobs.shards.run`): nothing passes between them but a :class:`ShardPlan` (JSON) and each
shard's :class:`~tileseg.engine.shards.run.ShardResult`. :func:`segment_sharded` (``tileseg segment --workers``)
runs the same three on one machine, the shards in child processes (:func:`tileseg.engine.shards.run.run_shards`).

1. :func:`plan_sharded` opens the input once, chooses the runtime, core and batch (the tuner) and cuts the
   tile plan into bands of tile rows. The choice is fixed in the plan: every shard must run the same window,
   or the seams between cores would move.
2. :func:`run_planned_shard` runs one band into shard files in a folder the caller names, with that fixed
   choice, wherever it runs.
3. :func:`assemble_sharded` streams the shard files in order, one tile row at a time, into the sinks a single
   run uses (mask GeoTIFF or COG, probabilities, polygons): memory follows a tile row, never the image. The
   shard files are read by the path strings in the results, so any path rasterio opens will do.

The outputs equal a single run's, for the reasons :mod:`tileseg.engine.shards.run` gives.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tileseg import models
from tileseg.engine.io.inputs import open_input
from tileseg.engine.io.read import ALLOWED_DRIVERS, gdal_env
from tileseg.engine.options import SegmentOptions
from tileseg.engine.outputs import check_outputs, keeps_probabilities, make_sinks, object_counts, provenance_tags
from tileseg.engine.pipeline import Progress
from tileseg.engine.readplan import read_plan
from tileseg.engine.resolution import pixel_size_warnings
from tileseg.engine.results import RuntimeReport, SegmentResult, runtime_report
from tileseg.engine.runtime.choice import Choice
from tileseg.engine.runtime.device import pick_device
from tileseg.engine.runtime.runtimes import Runtime
from tileseg.engine.runtime.tuner import choose_runtime
from tileseg.engine.shards.run import (
    ShardJob,
    ShardResult,
    assembled_strips,
    check_shardable,
    cores,
    parse_devices,
    plan_shards,
    run_shard,
    run_shards,
)
from tileseg.engine.sinks import write_all
from tileseg.engine.tiling import TilePlan, TileSettings, tile_settings, window_is_free
from tileseg.models.base import SegmentationNet
from tileseg.models.spec import ModelSpec


@dataclass(frozen=True)
class ShardPlan:
    """A sharded run's plan: the bands of tile rows, the plan's columns, and the fixed runtime choice.

    Attributes:
        bands: ``(first, stop)`` tile rows of each shard, top to bottom.
        cols: tiles a tile row.
        runtime: the tile settings and runtime every shard runs with (the tuner's choice, made once).
        note: why the shards that run are fewer than asked, or their tile smaller than the tuner's.
    """

    bands: tuple[tuple[int, int], ...]
    cols: int
    runtime: RuntimeReport
    note: str | None = None  # why the shard count or the tile differs from what was asked, said to the user

    @property
    def count(self) -> int:
        return len(self.bands)

    def tiles(self, index: int) -> int:
        """The tiles of shard ``index``."""
        first, stop = self.bands[index]
        return (stop - first) * self.cols

    @property
    def tiles_total(self) -> int:
        return sum(self.tiles(i) for i in range(self.count))

    def settings(self, model: SegmentationNet, options: SegmentOptions) -> TileSettings:
        """The fixed tile settings, checked again against the model's geometry."""
        report = self.runtime
        return TileSettings(
            model.spec.geometry, core=report.tile, blend=report.blend, overlap=options.overlap, batch=report.batch
        )

    def describe(self, index: int) -> str:
        """``shard 2 of 3 (tile rows 4-7)``: how errors name a shard."""
        first, stop = self.bands[index]
        return f"shard {index + 1} of {self.count} (tile rows {first}-{stop - 1})"

    def to_record(self) -> dict[str, Any]:
        """The plan as JSON (what the job table keeps)."""
        record = {"bands": [list(b) for b in self.bands], "cols": self.cols, "runtime": self.runtime.model_dump()}
        return {**record, "note": self.note} if self.note else record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ShardPlan:
        return cls(
            bands=tuple((int(a), int(b)) for a, b in record["bands"]),
            cols=int(record["cols"]),
            runtime=RuntimeReport.model_validate(record["runtime"]),
            note=record.get("note"),
        )


def plan_sharded(
    model: SegmentationNet,
    source: str | os.PathLike,
    count: int,
    options: SegmentOptions = SegmentOptions(),
    allowed_drivers: frozenset[str] = ALLOWED_DRIVERS,
    max_pixels: int | None = None,
) -> ShardPlan:
    """Plan a run of ``source`` in up to ``count`` shards (fewer when the image has fewer tile rows), the
    runtime, core and batch chosen by the tuner on the model's device.

    Raises:
        OptionsError: a blended mode, or a mask written on another grid than the one read (not exact in shards).
        TilesegError subclasses: the input's, as :func:`tileseg.engine.pipeline.segment`.
    """
    spec, device = model.spec, next(model.parameters()).device
    with gdal_env(), open_input(source, spec, options.bands, allowed_drivers, max_pixels, options.asset) as full:
        with read_plan(full, spec, options) as plan:
            src = plan.source
            check_shardable(plan, spec, options)
            choice = choose_runtime(model, device, options, src.height * src.width, src.width)
            settings, note = shard_settings(spec, options, (src.height, src.width), choice, count)
            tiles = TilePlan(settings, src.height, src.width)
    bands = tuple((band.start, band.stop) for band in plan_shards(tiles.rows, count))
    if len(bands) < count and note is None:
        note = f"{len(bands)} shards of the {count} asked: the image has {tiles.rows} tile rows of {settings.core} px"
    return ShardPlan(bands, tiles.cols, runtime_report(settings, choice.runtime, choice, device), note)


def shard_settings(
    spec: ModelSpec, options: SegmentOptions, shape: tuple[int, int], choice: Choice, count: int
) -> tuple[TileSettings, str | None]:
    """The tile settings of a run in ``count`` shards: the tuner's, unless its core leaves fewer tile rows than
    shards; then, where the window is free (an exact model, no ``--tile``), the largest core on the stride grid
    that gives every shard a tile row, on the same numeric path (the mask does not change). Returns the settings
    and, when the core was made smaller, why."""
    settings = tile_settings(spec, options, shape, choice)
    height, multiple = shape[0], spec.geometry.multiple
    if math.ceil(height / settings.core) >= count or not window_is_free(spec, options):
        return settings, None
    core = max(multiple, height // count // multiple * multiple)
    smaller = TileSettings(
        spec.geometry, core=core, blend=settings.blend, overlap=settings.overlap, batch=settings.batch
    )
    why = f"tile {core} px rather than the tuner's {settings.core}, so that each of the {count} shards has a tile row"
    return smaller, why


def run_planned_shard(
    model: SegmentationNet,
    source: str | os.PathLike,
    plan: ShardPlan,
    index: int,
    folder: Path,
    options: SegmentOptions = SegmentOptions(),
    probabilities: bool = False,
    progress: Progress | None = None,
    allowed_drivers: frozenset[str] = ALLOWED_DRIVERS,
    max_pixels: int | None = None,
) -> ShardResult:
    """Run shard ``index`` of ``plan`` in this process, on the model's device, into shard files in ``folder``
    (which exists).

    Raises:
        TilesegError subclasses for an input this process cannot read; anything a read or the network raises.
    """
    first, stop = plan.bands[index]
    job = ShardJob(
        index=index,
        count=plan.count,
        rows=range(first, stop),
        model=model,
        device=str(next(model.parameters()).device),
        threads=0,  # not used in this process: its threads are the caller's
        source=os.fspath(source),
        options=options,
        settings=plan.settings(model, options),
        runtime=Runtime.from_label(plan.runtime.runtime),
        folder=folder,
        probabilities=probabilities,
        cols=plan.cols,
        allowed_drivers=allowed_drivers,
        max_pixels=max_pixels,
    )
    return run_shard(job, progress)


def assemble_sharded(
    model: SegmentationNet,
    source: str | os.PathLike,
    plan: ShardPlan,
    results: Sequence[ShardResult],
    output: str | os.PathLike,
    options: SegmentOptions = SegmentOptions(),
    probabilities: str | os.PathLike | None = None,
    vectors: str | os.PathLike | None = None,
    allowed_drivers: frozenset[str] = ALLOWED_DRIVERS,
    max_pixels: int | None = None,
    devices: Sequence[str] | None = None,
    instances: str | os.PathLike | None = None,
    objects: str | os.PathLike | None = None,
) -> SegmentResult:
    """Write the outputs of a single run of ``source`` from the finished shards' files, streamed in order.

    Args:
        results: every shard of ``plan``, top to bottom.
        output, probabilities, vectors, instances, objects: as :func:`tileseg.engine.pipeline.segment`.
        devices: the shards' devices, when one machine ran them (recorded in the ``TILESEG_SHARDS`` tag).

    Raises:
        ValueError: ``results`` are not every shard of the plan, in order.
        TilesegError subclasses: the input's (it is opened again, for its grid, tags and region of interest).
    """
    started = time.perf_counter()
    if [r.index for r in results] != list(range(plan.count)):
        raise ValueError(f"the assembly needs all {plan.count} shards in order, not {[r.index for r in results]}")
    spec, report = model.spec, plan.runtime
    check_outputs(spec, vectors, instances, objects)
    with gdal_env(), open_input(source, spec, options.bands, allowed_drivers, max_pixels, options.asset) as full:
        with read_plan(full, spec, options) as read:
            tags = provenance_tags(model, read, options, report)
            shards: dict[str, Any] = {"shards": plan.count, **({"devices": list(devices)} if devices else {})}
            tags["TILESEG_SHARDS"] = json.dumps(shards)
            sinks = make_sinks(read, spec, options, Path(output), probabilities, vectors, instances, objects)
            write_all(sinks, assembled_strips(results, spec, report.step), tags)
    total, skipped = sum(r.tiles_total for r in results), sum(r.tiles_skipped for r in results)
    seconds = sum(r.seconds for r in results) + time.perf_counter() - started  # the work, not the wall time
    return SegmentResult(
        output=Path(output),
        probabilities=Path(probabilities) if probabilities else None,
        input=full.info,
        tiles_total=total,
        tiles_skipped=skipped,
        seconds=seconds,
        runtime=report,
        pixel_size=read.resolution.report(),
        warnings=pixel_size_warnings(read.resolution, spec) + ([plan.note] if plan.note else []),
        roi=read.roi.report(total, skipped, seconds) if read.roi else None,
        vectors=Path(vectors) if vectors is not None else None,
        instances=Path(instances) if instances is not None else None,
        objects_table=Path(objects) if objects is not None else None,
        objects=object_counts(sinks),
    )


def segment_sharded(
    model: SegmentationNet,
    source: str | os.PathLike,
    output: str | os.PathLike,
    devices: Sequence[str],
    options: SegmentOptions = SegmentOptions(),
    probabilities: str | os.PathLike | None = None,
    progress: Progress | None = None,
    allowed_drivers: frozenset[str] = ALLOWED_DRIVERS,
    max_pixels: int | None = None,
    vectors: str | os.PathLike | None = None,
    instances: str | os.PathLike | None = None,
    objects: str | os.PathLike | None = None,
) -> SegmentResult:
    """Segment ``source`` as :func:`tileseg.engine.pipeline.segment` does, in one shard per entry of
    ``devices``, each in a process of its own (:func:`~tileseg.engine.shards.run.run_shards`), planned and
    assembled as a queue's shards are; the outputs equal a single run's.

    Args:
        model: the network, on the device the tuner measures on (``devices[0]``'s); each shard gets a copy.
        devices: one per shard process, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu"] * 4``; each process gets
            ``cores // len(devices)`` torch threads.
        the rest: as :func:`tileseg.engine.pipeline.segment`.

    Raises:
        OptionsError: a blended mode, or a mask to be written on another grid than the one read.
        ShardError: a shard failed (its reason in the message); no output is left, nor any shard file.
        TilesegError subclasses: as :func:`tileseg.engine.pipeline.segment`.
    """
    started = time.perf_counter()
    devices = parse_devices(devices)
    check_outputs(model.spec, vectors, instances, objects)  # before any work
    keep_probabilities = keeps_probabilities(model.spec, probabilities, instances, objects, vectors)
    plan = plan_sharded(model, source, len(devices), options, allowed_drivers, max_pixels)
    device = next(model.parameters()).device
    shipped = model if device.type == "cpu" else copy.deepcopy(model).cpu()
    output = Path(output)
    folder = output.absolute().parent / f".{output.name}.shards-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    try:
        settings, runtime = plan.settings(model, options), Runtime.from_label(plan.runtime.runtime)
        threads = max(1, cores() // plan.count)
        jobs = [
            ShardJob(
                *(i, plan.count, range(*band), shipped, devices[i], threads, os.fspath(source), options, settings),
                *(runtime, folder, keep_probabilities, plan.cols, allowed_drivers, max_pixels),
            )
            for i, band in enumerate(plan.bands)
        ]
        results = run_shards(jobs, progress)
        used = devices[: plan.count]
        result = assemble_sharded(
            *(model, source, plan, results, output, options, probabilities, vectors, allowed_drivers, max_pixels),
            *(used, instances, objects),
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result.seconds = time.perf_counter() - started  # the wall time, shards and assembly
    return result


def run_file_sharded(
    name_or_path: str,
    source,
    output,
    devices: Sequence[str],
    options: SegmentOptions = SegmentOptions(),
    probabilities=None,
    progress: Progress | None = None,
    vectors=None,
    instances=None,
    objects=None,
) -> SegmentResult:
    """Load a model (with ``options.prune``) on the first device and segment one file in shards, one process
    per device: what ``tileseg segment --workers N`` (or ``--devices``) does."""
    devices = parse_devices(devices)
    check_outputs(models.card_spec(name_or_path), vectors, instances, objects)  # before loading the model
    model_options = {"prune": options.prune} if options.prune is not None else {}
    model = models.load(name_or_path, device=pick_device(devices[0]), **model_options)
    return segment_sharded(
        model,
        source,
        output,
        devices,
        options,
        probabilities,
        progress,
        vectors=vectors,
        instances=instances,
        objects=objects,
    )


__all__ = ["ShardPlan", "assemble_sharded", "plan_sharded", "run_file_sharded", "run_planned_shard", "segment_sharded"]
