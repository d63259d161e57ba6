"""Choosing how a run goes by measuring it: runtime, precision, memory format, window and batch.

Nothing about speed holds from one machine to the next. On a CPU with native bf16 (AVX-512-bf16, AMX) bf16
autocast is 2-3x faster than fp32; on an AVX2 CPU it is emulated and 6.5x *slower*. ONNX Runtime beat PyTorch
eager by 1.3-1.6x on an AVX2 EPYC; the kernels' speed jumps between window sizes (contiguous fp32 ran 0.74 Mpx/s
at a 512 px window and 0.38 at 576); a larger window wastes less on the halo. So the tuner measures, once a
machine, and keeps the fastest by **output pixels per second on the window it will run** (a window's exact
core, ``core**2`` pixels a window, is what a run produces):

1. *Screen*: every candidate runtime (:func:`tileseg.engine.runtime.runtimes.candidates`) on a small window; those
   :data:`SCREEN_FACTOR` times slower than the best are dropped, and the slower of two memory formats.
2. *Measure* the survivors at the model's default core.
3. *Walk the window* (exact models only, whose mask does not depend on it): first the largest core that fits
   the budget, the image and a call of about :data:`~tileseg.engine.runtime.search.JUMP_SECONDS` (a first run
   that has time for one point runs on at a large window), then from the default core up in steps of about
   :data:`LADDER`, then down, for the best runtimes, while the rate holds and the forward's measured peak
   memory stays within the budget (:func:`tileseg.engine.runtime.device.memory_budget`); then finer steps
   around the best core.
4. *Batch*: larger batches at the best core while they pay and fit.
5. *Compile* only pays on long runs: measured (compile time included) only when a run's estimated time is at
   least :data:`COMPILE_WORTH` typical compiles, chosen only when it saves more than it costs.

The search stops starting measurements after ``TILESEG_TUNE_SECONDS`` (default :data:`TUNE_SECONDS`) and
chooses from what it has; the window's search of a long run may take :data:`LONG_RUN_SHARE` of the run's
expected time instead, where that is longer. Measurements are cached on disk
(``$TILESEG_CACHE_DIR/runtime.json``) per checkpoint hash, device, library versions and model options; a
search once done is not done again, so later runs and every process on the machine (CLI, server, workers)
take the same choice at no cost. A long run's window search that its bound cut short is not done: the next run
goes on from its points within a bound of its own (on a slow CPU the first run's bound may go on the numeric path
alone). A candidate that fails (an operator a precision lacks, an export that differs from eager) is recorded
and never chosen.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any

import torch

from tileseg.config import engine_config
from tileseg.engine.options import SegmentOptions
from tileseg.engine.runtime.cache import (
    MeasurementCache,
    default_cache_path,
    empty_entry,
    merge_entry,
    model_key,
    without_windows,
)
from tileseg.engine.runtime.choice import Choice, Measurement, Request, Timer
from tileseg.engine.runtime.device import PeakMemory, describe_device, memory_budget, resident
from tileseg.engine.runtime.export import library_versions
from tileseg.engine.runtime.forward import prepare, release, run_forward
from tileseg.engine.runtime.path import Checker, invariance_error, signature
from tileseg.engine.runtime.runtimes import Runtime, candidates
from tileseg.engine.runtime.search import SEARCH_SHARE, Search
from tileseg.engine.tiling import tile_settings, window_is_free
from tileseg.models.base import SegmentationNet
from tileseg.models.spec import BlendMode

log = logging.getLogger(__name__)

# the search's bound on a first run, the numeric path's and the window's together (goal: a first run at most 10 s
# longer than later ones, which read the cache); the candidates' first measurements and their exports come on top
TUNE_SECONDS = 6.0
# a run expected to last longer than TUNE_SECONDS / LONG_RUN_SHARE (at its path's best rate known) may search
# its window for this share of that time: on a 2-core AVX2 EPYC the path's search alone took the 6 s, and a
# 4096² run went on at the card's window, at 0.45 of the rate of OpenVINO's largest one
LONG_RUN_SHARE = 0.05


def time_forward(
    model: SegmentationNet, runtime: Runtime, window: int, batch: int, seconds: float
) -> tuple[float, float, int | None]:
    """Seconds per forward pass of ``batch`` random windows in ``runtime`` (the fastest timed call), the first
    call's extra seconds (compiling, exporting, allocating) and the peak memory of a call at this size.

    The peak is what a second call takes at its highest beyond what the process held before the first: so a
    program's buffers kept for this size count (OpenVINO's), while a one-off cost of the first call (an
    export, a session) does not. Timed calls go on for ``seconds``."""
    device = next(model.parameters()).device
    x = torch.randn(batch, model.spec.input.bands, window, window, device=device)
    with torch.inference_mode():
        started = time.perf_counter()
        forward = prepare(model, runtime)
        getattr(forward, "clear", lambda: None)()  # shapes kept from other sizes would hide this one's cost
        before = resident(device)
        run_forward(model, runtime, x, device)
        _sync(device)
        first = time.perf_counter() - started
        times: list[float] = []

        def timed() -> None:
            began = time.perf_counter()
            run_forward(model, runtime, x, device)
            _sync(device)
            times.append(time.perf_counter() - began)

        started = time.perf_counter()
        with PeakMemory(device, since=before) as peak:
            timed()
        while True:  # bounded by the wall clock: a tiny window's thousands of calls cost their overhead too
            elapsed = time.perf_counter() - started
            if elapsed >= seconds or (len(times) >= 2 and elapsed >= seconds / 2):
                break
            timed()
    # the fastest call: what the machine gives this point, not what a neighbour's burst took from one call
    # (1088-px windows measured 5.6 to 12.3 Mpx/s in searches made while other work shared the 2-core VM)
    steady = min(times)
    return steady, max(0.0, first - steady), peak.bytes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tune_seconds() -> float:
    """The search's bound in seconds: ``TILESEG_TUNE_SECONDS``, else :data:`TUNE_SECONDS`."""
    configured = engine_config().tune_seconds
    return configured if configured else TUNE_SECONDS


class Tuner:
    """Measures candidates and chooses among them; one per process is enough (:func:`tuner`).

    Args:
        cache: where measurements persist; None keeps them in memory only.
        timer: how a point is timed (tests give a fake one).
        seconds: the search's bound (default :func:`tune_seconds`).
        checker: whether a runtime is tile-invariant on a model (:func:`tileseg.engine.runtime.path.invariance_error`).
    """

    def __init__(
        self,
        cache: MeasurementCache | None = None,
        timer: Timer = time_forward,
        seconds: float | None = None,
        checker: Checker | None = None,
    ):
        self.cache = cache
        self.timer = timer
        self.seconds = seconds
        self.checker = checker if checker is not None else invariance_error
        self._memory: dict[str, dict[str, Any]] = {}

    def choose(self, model: SegmentationNet, device: torch.device, request: Request, measure: bool = True):
        """The runtime, core and batch for a run (a :class:`Choice`); with ``measure`` False, None when this
        search was never done (``GET /models/{name}`` shows a choice without paying for one).

        The runtime is the model's numeric path on this device (:mod:`tileseg.engine.runtime.path`), chosen
        once among the candidates the run allows and kept whatever the core, batch or run size; only the core
        and the batch are then searched within it. With every choice fixed (one runtime left, or precision,
        runtime, tile and batch all given), nothing is measured.

        Raises:
            OptionsError: fixed choices the card, the device or the installed libraries do not allow.
        """
        persistent = model_key(model) is not None
        options = candidates(
            model.spec,
            device,
            request.precision,
            request.compile,
            getattr(model, "compilable", True),
            request.runtime,
            exportable=persistent,
        )
        if request.compile != "on":  # a compiled program is a numeric path of its own: taken when asked for
            options = [r for r in options if not r.compiled] or options
        fixed_runtime = len(options) == 1 or (
            request.precision != "auto" and (request.runtime == "torch" or request.compile == "on")
        )
        if fixed_runtime and request.core is not None and request.batch is not None:
            runtime = options[0] if len(options) == 1 else replace(options[0], channels_last=True)
            window = model.spec.geometry.window(request.core)
            return Choice(runtime, request.core, request.batch, "as asked", window=window, budget=request.budget)
        key = self._key(model, device)
        started = time.monotonic()
        path, searched = self._path(model, device, options, request, key, persistent, measure)
        if path is None:
            return None
        # one bound for both searches: what the path's search left of it (a cached path leaves all of it)
        seconds = max(0.0, self._bound() - (time.monotonic() - started))
        return self._within(model, device, path, request, key, persistent, measure, seconds, searched)

    def _path(self, model, device, options: list[Runtime], request: Request, key: str, persistent: bool, measure):
        """The numeric path among ``options``: recorded, or searched now over every window the model allows
        (whatever this run's core, batch and size), checked tile-invariant, and recorded; None when unknown and
        ``measure`` is False. With whether it was searched now."""
        entry = self._load(key, persistent)
        recorded = entry["paths"].get(signature(options))
        by_label = {r.label: r for r in options}
        if recorded is not None and recorded["runtime"] in by_label:
            return by_label[recorded["runtime"]], False
        if not measure:
            return None, False
        if len(options) == 1:  # the user's own choice: taken as it is
            return options[0], False
        core = None if request.searchable else request.core
        # the path is the model's on this device: not the image's (its size, its width)
        free = replace(request, core=core, batch=None, run_pixels=None, shape=None, row_bytes=0, thorough=True)
        search = Search(self.timer, self._bound(), model, device, options, free, entry["measurements"])
        log.info(
            "measuring this machine once for %s (about %.0f s; later runs reuse it)", model.spec.name, self._bound()
        )
        search.run()
        refused = dict(entry["refused"])
        while True:
            search.options = [r for r in options if r.label not in refused]
            choice = search.pick(entry["measurements"] + search.new)
            if not request.searchable or choice.rate is None:
                break
            why = self.checker(model, choice.runtime, device)
            if why is None:
                break
            log.warning("%s: %s %s; not taken", model.spec.name, choice.runtime.label, why)
            refused[choice.runtime.label] = why
        path = {"runtime": choice.runtime.label, "why": choice.reason}
        self._store(key, search.new, [], persistent, paths={signature(options): path}, refused=refused)
        release(model, keep=choice.runtime)
        return choice.runtime, True

    def _within(
        self, model, device, path: Runtime, request: Request, key: str, persistent: bool, measure, seconds: float, ends
    ):
        """The core and batch of a run on its numeric path ``path``: a search of its own within ``seconds``,
        recorded; ``ends`` after the path's search: only points expected to end within it (later runs go on)."""
        entry = self._load(key, persistent)
        rates = [m.rate for m in entry["measurements"] if m.runtime == path.label and m.status == "measured"]
        expected = request.run_pixels / max(rates) if request.run_pixels and rates and max(rates) > 0 else None
        if expected is not None:  # a long run may spend a share of itself on its window
            seconds = max(seconds, LONG_RUN_SHARE * expected)
        held = [request.budget >> 26, request.row_bytes.bit_length()]  # what bounds the window, roughly
        signature_ = json.dumps([[path.label], request.core, request.default_core, request.batch, *held])
        search = Search(self.timer, seconds, model, device, [path], request, entry["measurements"], ends=ends)
        # a search is recorded with the run size it was bounded for: a longer run searches on from its points
        size = request.run_pixels if request.run_pixels is not None else -1
        done = [int(s.rsplit("|", 1)[1]) for s in entry["searches"] if s.startswith(f"{signature_}|")]
        # shown without measuring: any point on this path will do (what a run would take, from its points)
        on_path = any(m.runtime == path.label for m in entry["measurements"])
        searched = any(d < 0 or (size >= 0 and d >= size) for d in done) or (not measure and on_path)
        if not searched:
            if not measure:
                return None
            log.info("measuring windows for this run (at most %.0f s; later runs reuse it)", seconds)
            search.run()
        search.compile_if_worth()
        # a search that its bound cut short, on a run long enough to search more (a short run's search is bounded
        # by the run's own time: enough for its size), is not recorded as done: the next run goes on from its
        # points (a first run whose bound went on the numeric path leaves the window to later runs)
        goes_on = search.unfinished and (expected is None or SEARCH_SHARE * expected >= self._bound())
        if goes_on:
            log.info("the window's search reached its bound; later runs go on with it")
        if search.new or not searched:
            entry = self._store(key, search.new, [] if goes_on else [f"{signature_}|{size}"], persistent)
        choice = search.pick(entry["measurements"])
        more = "; its window search goes on in later runs" if goes_on else ""
        choice.reason = f"numeric path {path.label} (chosen once for this model and device); {choice.reason}{more}"
        choice.searching, choice.measured = goes_on, len(search.new)
        if search.new:
            release(model, keep=choice.runtime)
        return choice

    def forget_windows(self, model: SegmentationNet, device: torch.device) -> None:
        """Forget what was measured for ``model`` on ``device`` but its numeric path (``tileseg tune --again``:
        a search made while other work shared the machine is otherwise kept for good)."""
        key = self._key(model, device)
        if self.cache and model_key(model) is not None:
            self.cache.forget_windows(key)
        if key in self._memory:
            self._memory[key] = without_windows(self._memory[key])

    def _bound(self) -> float:
        return self.seconds if self.seconds is not None else tune_seconds()

    def _key(self, model: SegmentationNet, device: torch.device) -> str:
        checkpoint = model_key(model) or f"process:{id(model):x}"
        return json.dumps(
            {
                "model": checkpoint,
                "device": describe_device(device),
                "versions": library_versions(),
                "options": model.spec.options,
            },
            sort_keys=True,
        )

    def _load(self, key: str, persistent: bool) -> dict[str, Any]:
        # the disk first: every process on the machine then takes the same choice for the same run
        if self.cache and persistent:
            found = self.cache.get(key)
            if found["measurements"] or found["paths"]:
                return found
        return self._memory.get(key, empty_entry())

    def _store(
        self, key: str, measured: list[Measurement], searches: list[str], persistent: bool, **records: dict
    ) -> dict[str, Any]:
        if self.cache and persistent:
            entry = self.cache.merge(key, measured, searches, **records)
        else:
            entry = merge_entry(self._memory.get(key, empty_entry()), measured, searches, **records)
        self._memory[key] = entry
        return entry


_TUNER: Tuner | None = None


def tuner() -> Tuner:
    """The process's tuner, caching on disk at :func:`default_cache_path`."""
    global _TUNER
    if _TUNER is None or (_TUNER.cache and _TUNER.cache.path != default_cache_path()):
        _TUNER = Tuner(MeasurementCache())
    return _TUNER


def runtime_request(
    model: SegmentationNet,
    device,
    options: SegmentOptions,
    run_pixels: int | None,
    width: int = 0,
    probabilities: bool = False,
    object_bytes: int = 0,
) -> Request:
    """What a run over ``run_pixels`` output pixels, ``width`` wide, leaves to the tuner; the core is searched
    only where :func:`window_is_free`. The budget covers the band of tile rows the image's width implies
    (:attr:`Request.row_bytes`: labels and validity, a byte each, the probabilities' float32 per class when
    they are kept: asked for, averaged over flips, or blended, and ``object_bytes`` a pixel when objects are
    decoded: :func:`tileseg.engine.outputs.object_bytes_per_pixel`).

    Raises:
        TileGeometryError: a tile, blend or overlap the model's geometry refuses (before anything is measured:
            the tuner must never time a window the tiling would refuse).
    """
    geometry = model.spec.geometry
    tile_settings(model.spec, options)  # checks --tile, --blend and --overlap against the geometry
    fixed_core = None if window_is_free(model.spec, options) else (options.tile or geometry.default_tile)
    return Request(
        core=fixed_core,
        searchable=window_is_free(model.spec, options.model_copy(update={"tile": None})),
        default_core=geometry.default_tile,
        batch=options.batch,
        budget=memory_budget(device, options.memory),
        run_pixels=run_pixels,
        shape=(run_pixels // width, width) if width and run_pixels else None,
        row_bytes=width * (row_bytes_per_pixel(model.spec, options, probabilities) + object_bytes),
        precision=options.precision.value,
        compile=options.compile.value,
        runtime=options.runtime.value,
    )


def row_bytes_per_pixel(spec, options: SegmentOptions, probabilities: bool) -> int:
    """Bytes a run holds per output pixel of its band of tile rows."""
    blended = (options.blend or spec.geometry.blend) is not BlendMode.CROP
    kept = probabilities or options.tta or blended
    return 2 + (4 * spec.num_classes if kept else 0)


def choose_runtime(
    model: SegmentationNet,
    device,
    options: SegmentOptions,
    run_pixels: int,
    width: int = 0,
    probabilities: bool = False,
    object_bytes: int = 0,
) -> Choice:
    """The runtime, core and batch of a run over an image ``width`` wide, measured by the tuner (cached per
    machine; see :mod:`tileseg.engine.runtime.tuner`)."""
    request = runtime_request(model, device, options, run_pixels, width, probabilities, object_bytes)
    return tuner().choose(model, device, request)


def known_choice(model: SegmentationNet, options: SegmentOptions = SegmentOptions()) -> Choice | None:
    """What a run with ``options`` would take on the model's device, if this machine has measured it already
    (nothing is measured here); None otherwise."""
    device = next(model.parameters()).device
    return tuner().choose(model, device, runtime_request(model, device, options, None), measure=False)


__all__ = [
    "Choice",
    "Measurement",
    "Request",
    "Tuner",
    "choose_runtime",
    "known_choice",
    "runtime_request",
    "time_forward",
    "tune_seconds",
    "tuner",
]
