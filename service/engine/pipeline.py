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

import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from tileseg import __version__, models
from tileseg.engine.batches import BatchRunner
from tileseg.engine.device import memory_budget, pick_device
from tileseg.engine.io.inputs import open_input
from tileseg.engine.io.pixelsize import describe
from tileseg.engine.io.read import ALLOWED_DRIVERS, RasterInfo, gdal_env
from tileseg.engine.io.slide import SlideRaster
from tileseg.engine.io.source import RasterSource
from tileseg.engine.memory import release_free_memory
from tileseg.engine.options import DEFAULT_BATCH, SegmentOptions
from tileseg.engine.prediction import TilePrediction
from tileseg.engine.readplan import ReadPlan, read_plan
from tileseg.engine.resolution import Resolution
from tileseg.engine.results import PixelSizeReport, RoiReport, RuntimeReport
from tileseg.engine.runtime import Runtime
from tileseg.engine.sinks import MaskSink, Sink, write_all
from tileseg.engine.stitching import Strip, build_stitcher
from tileseg.engine.tiling import Tile, TilePlan, TileSettings
from tileseg.engine.tuner import Choice, Request, tuner
from tileseg.engine.vectors import VectorSink, check_vector_path
from tileseg.errors import TilesegError
from tileseg.models.base import SegmentationNet
from tileseg.models.spec import BlendMode

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (tiles done, tiles total); raising from it stops the run


@dataclass
class SegmentResult:
    """What a finished run produced and how it went.

    Attributes:
        pixel_size: the pixel sizes, the level read and why, the pixels decoded.
        runtime: the tile settings and the runtime the network ran in.
        roi: the region of interest's share of the tiles and the time it saved, or None.
    """

    output: Path
    probabilities: Path | None
    input: RasterInfo
    tiles_total: int
    tiles_skipped: int
    seconds: float
    runtime: RuntimeReport
    pixel_size: PixelSizeReport
    warnings: list[str] = field(default_factory=list)
    roi: RoiReport | None = None
    vectors: Path | None = None


def tile_settings(
    spec: models.ModelSpec,
    options: SegmentOptions,
    shape: tuple[int, int] | None = None,
    choice: Choice | None = None,
) -> TileSettings:
    """The tile settings of a run, from the options, the tuner's ``choice`` (core and batch) and the model's
    defaults; checked against its geometry.

    Without ``--tile``, and given the image's ``shape``, the core (the tuner's, else the model's default) is
    evened out over the image: the fewest cores of at most that size that cover it, each as small as the
    stride allows. A 512-pixel image then takes two 256-pixel cores a side rather than two of 384, 40 % less
    work for the same exact result; on large images nothing changes. Networks that are not
    translation-equivariant (transformers) keep their default core, whose window is the size they were
    trained on.
    """
    geometry = spec.geometry
    core = options.tile
    batch = options.batch or (choice.batch if choice else DEFAULT_BATCH)
    if core is None:
        core = choice.core if choice else geometry.default_tile
        if shape is not None and geometry.equivariant:
            longest = max(shape)
            count = math.ceil(longest / core)
            core = min(core, math.ceil(math.ceil(longest / count) / geometry.multiple) * geometry.multiple)
    return TileSettings(
        geometry, core=core, blend=options.blend or geometry.blend, overlap=options.overlap, batch=batch
    )


def window_is_free(spec: models.ModelSpec, options: SegmentOptions) -> bool:
    """Whether the tuner may choose the window: only for exact runs (a translation-equivariant network in crop
    mode, no fixed window), whose mask does not depend on it, and only when ``--tile`` is not given."""
    geometry = spec.geometry
    blend = options.blend or geometry.blend
    return options.tile is None and geometry.equivariant and blend is BlendMode.CROP and geometry.fixed_window is None


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
) -> SegmentResult:
    """Segment the raster at ``source`` into a class-index GeoTIFF at ``output``.

    Args:
        model: a network from :func:`tileseg.models.load` (it carries its ``.spec``), on the device to run on.
        source: any raster GDAL reads (GeoTIFF/BigTIFF/COG, PNG, JPEG, Aperio SVS level 0), local or at an
            ``s3://`` or ``http(s)://`` URL, or a STAC item (``options.asset``, ``options.bands`` by common name).
        output: the mask to write; it appears only when complete.
        options: tiling, bands, flips, precision (see :class:`SegmentOptions`).
        probabilities: where to write per-class probabilities (uint8, 0..255), or None.
        progress: called with (tiles done, tiles total) after each batch; raise from it to cancel.
        allowed_drivers, max_pixels: what inputs to accept.
        vectors: where to write the polygons of the mask's regions (:mod:`tileseg.engine.vectors`; the suffix
            says the format), made in the same pass, or None.

    Raises:
        TilesegError subclasses for anything the caller can fix (input, bands, dtype, tile settings).
    """
    started = time.perf_counter()
    spec, device = model.spec, next(model.parameters()).device
    if vectors is not None:
        check_vector_path(vectors)  # before any work
    with gdal_env(), open_input(source, spec, options.bands, allowed_drivers, max_pixels, options.asset) as full:
        with read_plan(full, spec, options) as plan:
            src = plan.source
            choice = choose_runtime(model, device, options, src.height * src.width)
            settings = tile_settings(spec, options, (src.height, src.width), choice)
            runner = BatchRunner(
                model, settings, src.scaling, device, choice.runtime, options.tta, probabilities is not None
            )
            tags = provenance_tags(model, plan, options, runtime_report(settings, choice.runtime, choice, device))
            sinks = make_sinks(plan, spec, options, Path(output), probabilities, vectors)
            counts = TileCounts()
            write_all(sinks, plan.output_strips(predict_strips(runner, src, counts, options.readers, progress)), tags)
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
    )


def runtime_report(settings: TileSettings, runtime: Runtime, choice: Choice, device) -> RuntimeReport:
    """How a run ran (or, before it, is to run) in ``runtime``."""
    return RuntimeReport(
        tile=settings.core,
        window=settings.window,
        step=settings.step,
        blend=settings.blend.value,
        batch=settings.batch,
        precision=runtime.precision,
        runtime=runtime.label,
        runtime_reason=choice.reason,
        device=str(device),
        tuning=choice.summary(),
    )


def make_sinks(plan: ReadPlan, spec, options: SegmentOptions, output: Path, probabilities, vectors) -> list[Sink]:
    """The run's sinks: the polygons first (the likelier to fail, so finished first), then the mask."""
    target = plan.target
    cog = options.cog or isinstance(plan.full, SlideRaster)
    vector_sink = VectorSink.of(vectors, spec, target, options, plan.target_pixel_size)
    mask_sink = MaskSink(target, spec, output, probabilities, cog)
    return [mask_sink] if vector_sink is None else [vector_sink, mask_sink]


def provenance_tags(
    model: SegmentationNet, plan: ReadPlan, options: SegmentOptions, runtime: RuntimeReport
) -> dict[str, str]:
    """The provenance tags of a mask: model, options, runtime, the pixel size read and why, the region of
    interest; for an input without a CRS whose pixel size is known, TIFF resolution tags (pixels per
    centimetre) as slide viewers read them."""
    full, pixel = plan.full, plan.target_pixel_size
    tags = {
        "TILESEG_MODEL": model.spec.name,
        "TILESEG_CARD_SHA256": _card_hash(model),
        "TILESEG_VERSION": __version__,
        "TILESEG_OPTIONS": json.dumps(
            {**options.to_record(), "tile": runtime.tile, "blend": runtime.blend, "precision": runtime.precision}
        ),
        "TILESEG_RUNTIME": json.dumps({**runtime.tuning, "window": runtime.window, "device": runtime.device}),
        "TILESEG_SOURCE": full.info.name,
        "TILESEG_PIXEL_SIZE": json.dumps(plan.resolution.report().model_dump(exclude={"pixels_read"})),
    }
    if full.crs is None and pixel is not None:
        per_cm = f"{0.01 / pixel:.6f}"
        tags.update(TIFFTAG_XRESOLUTION=per_cm, TIFFTAG_YRESOLUTION=per_cm, TIFFTAG_RESOLUTIONUNIT="3")
    if plan.roi:
        roi = plan.roi
        tags["TILESEG_ROI"] = json.dumps({"source": roi.source, "area_share": round(float(roi.mask.mean()), 4)})
    return tags


def runtime_request(model: SegmentationNet, device, options: SegmentOptions, run_pixels: int | None) -> Request:
    """What a run over ``run_pixels`` output pixels leaves to the tuner; the core is searched only where
    :func:`window_is_free`.

    Raises:
        TileGeometryError: a tile, blend or overlap the model's geometry refuses (before anything is measured:
            the tuner must never time a window the tiling would refuse).
    """
    geometry = model.spec.geometry
    tile_settings(model.spec, options)  # checks --tile, --blend and --overlap against the geometry
    fixed_core = None if window_is_free(model.spec, options) else (options.tile or geometry.default_tile)
    return Request(
        core=fixed_core,
        default_core=geometry.default_tile,
        batch=options.batch,
        budget=memory_budget(device, options.memory),
        run_pixels=run_pixels,
        precision=options.precision.value,
        compile=options.compile.value,
        runtime=options.runtime.value,
    )


def choose_runtime(model: SegmentationNet, device, options: SegmentOptions, run_pixels: int) -> Choice:
    """The runtime, core and batch of a run, measured by the tuner (cached per machine; see
    :mod:`tileseg.engine.tuner`)."""
    return tuner().choose(model, device, runtime_request(model, device, options, run_pixels))


def known_choice(model: SegmentationNet, options: SegmentOptions = SegmentOptions()) -> Choice | None:
    """What a run with ``options`` would take on the model's device, if this machine has measured it already
    (nothing is measured here); None otherwise."""
    device = next(model.parameters()).device
    return tuner().choose(model, device, runtime_request(model, device, options, None), measure=False)


@dataclass(frozen=True)
class TileBand(TilePlan):
    """The tiles of tile rows ``first .. stop - 1`` of an image's plan: what one shard runs
    (:mod:`tileseg.engine.shards`).

    The tiles keep their place in the whole image's grid (their windows, halo and mirror padding are the
    whole plan's, so a band's cores equal the whole run's); only their ``index`` counts from the band's first
    tile, which is the order the stitcher expects.
    """

    first: int = 0
    stop: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.first < self.stop <= self.rows:
            raise ValueError(f"tile rows {self.first}..{self.stop} are not a band of the plan's {self.rows}")

    def __len__(self) -> int:
        return (self.stop - self.first) * self.cols

    def __iter__(self) -> Iterator[Tile]:
        step, cols = self.settings.step, self.cols
        for r in range(self.first, self.stop):
            y = r * step
            for c in range(cols):
                x = c * step
                index = (r - self.first) * cols + c
                yield Tile(index, r, c, y, x, min(step, self.height - y), min(step, self.width - x))


@dataclass
class TileCounts:
    total: int = 0
    done: int = 0
    skipped: int = 0


def predict_strips(
    runner: BatchRunner,
    src: RasterSource,
    counts: TileCounts | None = None,
    readers: int = 2,
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
        readers: threads reading windows ahead of the network.
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
    return tiles, active, np.stack(windows) if windows else None


def _prefetch(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` in order, computed by ``workers`` threads running up to ``2 * workers`` ahead."""
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


def _card_hash(model: SegmentationNet) -> str:
    path = getattr(model, "checkpoint_path", None)
    return models.card_hash(path) if path else "unknown"


def pixel_size_warnings(resolution: Resolution, spec: models.ModelSpec) -> list[str]:
    """A warning when the run reads at a pixel size far from the model's, or cannot tell."""
    model, read = resolution.model, resolution.read
    if model is None:
        return []
    if read is None:
        note = f"{spec.name} was trained at {describe(model)}; {resolution.why}"
        log.warning(note)
        return [note]
    ratio = read / model
    if abs(ratio - 1) > spec.input.pixel_tolerance and abs(1 / ratio - 1) > spec.input.pixel_tolerance:
        note = (
            f"the pixel size read ({describe(read)}) differs from the {describe(model)} that {spec.name} was "
            f"trained at by {max(ratio, 1 / ratio):.1f}x ({resolution.why}): expect a poorer result"
        )
        log.warning(note)
        return [note]
    return []


def run_file(
    name_or_path: str,
    source,
    output,
    options: SegmentOptions = SegmentOptions(),
    device: str = "auto",
    probabilities=None,
    progress: Progress | None = None,
    vectors=None,
) -> SegmentResult:
    """Load a model (with ``options.prune``) and segment one file: what ``tileseg segment`` does."""
    if vectors is not None:
        check_vector_path(vectors)  # before loading the model
    model_options = {"prune": options.prune} if options.prune is not None else {}
    model = models.load(name_or_path, device=pick_device(device), **model_options)
    return segment(model, source, output, options, probabilities, progress, vectors=vectors)


__all__ = [
    "SegmentOptions",
    "SegmentResult",
    "TilesegError",
    "make_sinks",
    "pixel_size_warnings",
    "predict_strips",
    "provenance_tags",
    "run_file",
    "runtime_report",
    "segment",
    "tile_settings",
]
