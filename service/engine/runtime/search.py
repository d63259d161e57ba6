"""One search of the tuner (:mod:`tileseg.engine.runtime.tuner`): the points it measures and the choice it makes
(its records: :mod:`tileseg.engine.runtime.choice`).

The steps of the search as the tuner gives them: screen, measure at the default core, walk the window (the jump to
the largest core first), refine, batch, compile. A search its bound cuts short says so
(:attr:`Search.unfinished`): the tuner then lets the next run go on from its points."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from tileseg.engine.options import MAX_TILE
from tileseg.engine.runtime.choice import Choice, Measurement, Request, Timer
from tileseg.engine.runtime.device import native_bf16
from tileseg.engine.runtime.forward import is_prepared, release
from tileseg.engine.runtime.path import without_emulated_bf16
from tileseg.engine.runtime.runtimes import BASELINE, Runtime

log = logging.getLogger(__name__)

SCREEN_FACTOR = 2.5  # a candidate this much slower than the best on the small window is not measured further
SCREEN_CORE = 128  # about the core of the screening window
MEASURE_SECONDS = 0.3  # timed calls per point stop after this long (after one warm-up call, at least one timed)
# (a screening point times one call: it only ranks the candidates roughly)
LADDER = 1.4  # ratio between the cores of the coarse window walk
EDGE_STEP = 1.15  # ... whose last step up, cut to the budget's edge, must still be this much larger
WALK_RUNTIMES = 2  # runtimes whose window is walked (the best at the default core first)
WALK_WITHIN = 1.5  # ... and only those at least 1/1.5 of the best's rate there: a larger window rarely gains more
WORSE = 0.8  # a walk stops after two steps below this share of the best rate
JUMP_SECONDS = 2.0  # a walk's first point: the largest core that fits, whose call takes about this long at most
JUMP_SHARE = 0.1  # ... and at most this share of the run's time at the start core (a short run does not jump)
# the numeric path's search measures the jump of each runtime walked whatever its bound: there a call of at most a
# third of that bound, at most this many start cores (where runs go on, not a tiny test network's 2000-px window)
PATH_JUMP_REACH = 3
COMPILE_WORTH = 3.0  # measure compilation only for runs whose time is this many typical compiles
TYPICAL_COMPILE_SECONDS = 20.0  # what compiling a zoo network took here (CPU, inductor): 9-23 s
SEARCH_SHARE = 3.0  # a first run searches at most 3x as long as it would run at the screening rate (within the bound)
MIN_SEARCH_SECONDS = 1.0


class Search:
    """One search over the candidates of a request (see the module's docstring for its steps)."""

    def __init__(
        self, timer: Timer, seconds: float, model, device, options: list[Runtime], request: Request, known, ends=False
    ):
        """``ends``: a point is measured only where it is expected to end within the bound (a first run's window
        search, in what the path's search left of the bound); else one starts while the bound lasts."""
        self.timer, self.model, self.device, self.options, self.request = timer, model, device, options, request
        self.ends = ends
        self.geometry = model.spec.geometry
        self.points: dict[tuple[str, int, int], Measurement] = {m.point: m for m in known}
        self.new: list[Measurement] = []
        self.unfinished, self.started = False, time.monotonic()  # unfinished: a walk's point left for lack of time
        self.deadline = self.started + seconds

    def measure(
        self, runtime: Runtime, core: int, batch: int, force: bool = False, quick: bool = False
    ) -> Measurement | None:
        """The point's measurement, known or timed now (``quick``: one timed call after the warm-up); None past
        the deadline (unless ``force``) or the budget."""
        known = self.points.get((runtime.label, core, batch))
        if known is not None:
            return known
        expected = self._duration(runtime, core, batch) if self.ends else 0.0
        late = not force and time.monotonic() + expected > self.deadline
        self.unfinished |= late
        if late or (not force and self._estimate(runtime, core, batch) > self.request.budget):
            return None
        window = self.geometry.window(core)
        try:
            seconds, setup, peak = self.timer(self.model, runtime, window, batch, 0.0 if quick else MEASURE_SECONDS)
            m = Measurement(runtime.label, core, batch, seconds=seconds, setup=setup, peak=peak)
        except Exception as err:  # an operator the precision lacks, an export that differs: never chosen
            log.info("runtime %s failed on %s at %d px: %s", runtime.label, self.model.spec.name, window, err)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            m = Measurement(runtime.label, core, batch, status="failed", error=f"{type(err).__name__}: {first}"[:300])
        self.points[m.point] = m
        self.new.append(m)
        return m

    def _duration(self, runtime: Runtime, core: int, batch: int) -> float:
        """How long measuring a point takes at least: its warm-up call and one timed call, and the nearest point's
        setup (compiling a shape: 0.3-0.7 s for OpenVINO on an AVX2 EPYC, about the same at any window); 0 where
        nothing of the runtime is measured."""
        seconds = 2 * self._scaled(runtime, core, batch, lambda m: m.seconds)
        return seconds + self._scaled(runtime, core, batch, lambda m: m.setup, per_pixel=False)

    def _estimate(self, runtime: Runtime, core: int, batch: int) -> float:
        """A point's peak: the forward's (see :meth:`_scaled`) and the band its core holds."""
        return core * self.request.row_bytes + self._scaled(runtime, core, batch, lambda m: m.peak)

    def _scaled(
        self, runtime: Runtime, core: int, batch: int, value: Callable[[Measurement], float | None], per_pixel=True
    ) -> float:
        """``value`` of the nearest point of the same runtime that has one, scaled by the pixels a point at
        ``core`` and ``batch`` holds (unless not ``per_pixel``; 0 where none has)."""
        window = self.geometry.window(core)
        known = [(m, v) for m in self.points.values() if m.runtime == runtime.label and (v := value(m)) is not None]
        if not known:
            return 0.0
        near, at_near = min(known, key=lambda pair: abs(self.geometry.window(pair[0].core) - window))
        scale = (batch * window**2) / (near.batch * self.geometry.window(near.core) ** 2) if per_pixel else 1.0
        return at_near * scale

    def _rate(self, runtime: Runtime, core: int, batch: int) -> float:
        m = self.points.get((runtime.label, core, batch))
        return m.rate if m is not None and m.status == "measured" and not self._over(m) else 0.0

    def _over(self, m: Measurement) -> bool:
        """Whether a point takes more than the budget: its forward's measured peak and the band its core holds."""
        return (m.peak or 0) + m.core * self.request.row_bytes > self.request.budget

    def run(self) -> None:
        """Screen, measure at the start core, walk the window, refine, then the batch. Only the first candidate
        is measured whatever the bound (something must be chosen); the bound itself shrinks to a share of the
        run's estimated time, so that a one-second run never pays a twenty-second search."""
        request = self.request
        start, batch = request.core or request.default_core, request.batch or 1
        eager = [r for r in self.options if not r.compiled] or self.options
        screen = self._screen_core(start)
        # a fixed window (a blended model, --tile) is measured where it runs: a transformer exported at its
        # window may not even take a smaller one
        if len(eager) > 1 and screen < start and request.core is None:
            for i, r in enumerate(eager):
                self.measure(r, screen, 1, force=i == 0 or request.thorough, quick=True)
                if i == 0:
                    self._bound_by_run(self._rate(r, screen, 1))
            fastest = max(self._rate(r, screen, 1) for r in eager)
            eager = self._one_format([r for r in eager if self._rate(r, screen, 1) * SCREEN_FACTOR >= fastest > 0])
            self._forget(eager)
        for i, r in enumerate(eager):
            self.measure(r, start, batch, force=i == 0 or request.thorough)
            if i == 0:
                self._bound_by_run(self._rate(r, start, batch))
        ranked = sorted(
            (r for r in eager if self._rate(r, start, batch) > 0), key=lambda r: -self._rate(r, start, batch)
        )
        if not ranked:
            return
        if request.core is None and not ranked[0].compiled:
            best = self._rate(ranked[0], start, batch)
            walked = [r for r in ranked[:WALK_RUNTIMES] if self._rate(r, start, batch) * WALK_WITHIN >= best]
            self._forget(walked)
            walks = [self._walk(r, start, batch) for r in walked]
            while walks:  # in turn, a point each, sharing the bound: one walked first had left the other none
                walks = [w for w in walks if next(w, False) is not False]
        cut = self.unfinished  # what later runs go on with is the walk: refining and batches only while time lasts
        if request.core is None and not ranked[0].compiled:
            self._refine(*self._best_core(ranked[0], batch))
        best, core = self._best_core(ranked[0], batch) if request.core is None else (ranked[0], start)
        if request.batch is None and not best.compiled:
            self._batches(best, core)
        self.unfinished = cut

    def _one_format(self, runtimes: list[Runtime]) -> list[Runtime]:
        """Of runtimes that differ only in their memory format, the one faster on the screen: the format's lead
        holds at every window on a CPU (channels-last ahead of contiguous in every ceiling scan, 1.5-3x), and the
        loser's point at the start core was a second of an AVX2 EPYC's first run."""
        screen = self._screen_core(self.request.default_core)
        faster: dict[tuple[str, str], Runtime] = {}
        for r in runtimes:
            twin = faster.get((r.precision, r.mode))
            if twin is None or self._rate(r, screen, 1) > self._rate(twin, screen, 1):
                faster[(r.precision, r.mode)] = r
        return [r for r in runtimes if faster[(r.precision, r.mode)] is r]

    def _forget(self, kept: list[Runtime]) -> None:
        """Drop the programs of the runtimes the search has left behind, and give their memory back: a first
        run must not hold every candidate's program at once (its peak would be the search's, not the run's)."""
        if len(kept) < len(self.options):
            release(self.model, kept)

    def _bound_by_run(self, rate: float) -> None:
        """Bring the deadline in to :data:`SEARCH_SHARE` of the run's time at ``rate`` (at least
        :data:`MIN_SEARCH_SECONDS`)."""
        if self.request.run_pixels is None or rate <= 0:
            return
        share = max(MIN_SEARCH_SECONDS, SEARCH_SHARE * self.request.run_pixels / rate)
        self.deadline = min(self.deadline, self.started + share)

    def _screen_core(self, start: int) -> int:
        multiple = self.geometry.multiple
        if self.geometry.fixed_window is not None:
            return start
        return max(multiple, min(start // 2, SCREEN_CORE) // multiple * multiple)

    def _best_core(self, first: Runtime, batch: int) -> tuple[Runtime, int]:
        """The runtime and core of the fastest point at ``batch`` so far."""
        found = [
            (self._rate(r, core, b), r, core)
            for (label, core, b) in self.points
            for r in self.options
            if r.label == label and b == batch and not r.compiled
        ]
        best = max(found, key=lambda f: f[0], default=(0.0, first, self.request.core or self.request.default_core))
        return best[1], best[2]

    def _step(self, core: int, up: bool, ratio: float = LADDER) -> int | None:
        multiple = self.geometry.multiple
        nxt = math.ceil(core * ratio / multiple) * multiple if up else math.floor(core / ratio / multiple) * multiple
        nxt = max(nxt, core + multiple) if up else min(nxt, core - multiple)
        return nxt if multiple <= nxt <= MAX_TILE else None

    def _walk(self, runtime: Runtime, start: int, batch: int) -> Iterator[None]:
        """The :meth:`_jump` first; then up from ``start`` while the rate holds and the peak fits (the last step
        up to the budget's edge), then down while it improves (not where a larger window beats the start already);
        a point a step."""
        if (jump := self._jump(runtime, start, batch)) is not None:
            # the numeric path's search measures every walked runtime there, whatever its bound: runtimes tied at
            # the start core may be far apart at large windows, where runs go on
            self.measure(runtime, jump, batch, force=self.request.thorough)
            yield
        for up in (True, False):
            best, core, worse = self._rate(runtime, start, batch), start, 0
            if not up and self._beaten_above(runtime, start, batch):
                break  # a larger window (the jump's, the walk's) already beats the start: nothing to find below
            while (step := self._step(core, up)) is not None:
                if up and (step := self._fitting(runtime, core, step, batch)) is None:
                    break
                core = step
                m = self.measure(runtime, core, batch)
                yield
                if m is None or m.status != "measured" or self._over(m):
                    break
                if m.rate >= best:
                    best, worse = m.rate, 0
                elif m.rate < WORSE * best:
                    worse += 1
                    if worse >= (2 if up else 1):
                        break

    def _beaten_above(self, runtime: Runtime, core: int, batch: int) -> bool:
        """Whether a larger core of ``runtime`` at ``batch`` was measured faster than ``core``."""
        rate = self._rate(runtime, core, batch)
        return any(
            label == runtime.label and b == batch and c > core and self._rate(runtime, c, b) > rate
            for label, c, b in self.points
        )

    def _jump(self, runtime: Runtime, start: int, batch: int) -> int | None:
        """The largest core that fits the budget, the image's shorter side and a call of :data:`JUMP_SECONDS` (at
        the start's seconds per window pixel; :data:`JUMP_SHARE` of the run's time, if shorter), where that is
        beyond the ladder's second step: on a CPU the rate grows with the window (OpenVINO's 2.4x from window 576
        to 1728 on an AVX2 EPYC), and a first run whose bound allowed a point or two ran on at the ladder's
        second step, 3-4 s slower on a 4096² image."""
        at, multiple = self.points.get((runtime.label, start, batch)), self.geometry.multiple
        second = self._step(start, True)
        second = self._step(second, True) if second is not None else None
        if at is None or not at.seconds or second is None:
            return None
        per_pixel = at.seconds / (batch * self.geometry.window(start) ** 2)
        run = self.request.run_pixels
        seconds = JUMP_SECONDS if run is None else min(JUMP_SECONDS, JUMP_SHARE * run / at.rate)
        reach = MAX_TILE
        if self.request.thorough:  # measured whatever the bound: a call of at most a third of it, not too far
            seconds, reach = min(seconds, (self.deadline - self.started) / 3), PATH_JUMP_REACH * start

        def fits(core: int) -> bool:
            quick = batch * self.geometry.window(core) ** 2 * per_pixel <= seconds
            return quick and self._estimate(runtime, core, batch) <= self.request.budget

        low, high = second // multiple, min((reach, MAX_TILE, *(self.request.shape or ()))) // multiple + 1
        while high - low > 1:  # the largest multiple that fits, by bisection (both bounds grow with the core)
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle * multiple) else (low, middle)
        return low * multiple if low * multiple > second else None

    def _fitting(self, runtime: Runtime, core: int, step: int, batch: int) -> int | None:
        """``step``, else the largest core below it whose estimated peak fits the budget, if that is still a
        step (:data:`EDGE_STEP`) up from ``core``: a ladder step over the budget must not end the walk a whole
        step short of it (the rate still grows there on a CPU)."""
        multiple = self.geometry.multiple
        for nxt in range(step, math.ceil(core * EDGE_STEP / multiple) * multiple - 1, -multiple):
            if self._estimate(runtime, nxt, batch) <= self.request.budget:
                return nxt
        return None

    def _refine(self, runtime: Runtime, core: int) -> None:
        """Halve the step around the best core while time lasts: kernel speed is not smooth in the window."""
        step = max(
            self.geometry.multiple, round(core * (LADDER - 1) / 2 / self.geometry.multiple) * self.geometry.multiple
        )
        while step >= self.geometry.multiple and time.monotonic() < self.deadline:
            for nxt in (core - step, core + step):
                if nxt >= self.geometry.multiple:
                    self.measure(runtime, nxt, 1)
            core = max((core, core - step, core + step), key=lambda c: self._rate(runtime, c, 1))
            step = step // 2 // self.geometry.multiple * self.geometry.multiple

    def _batches(self, runtime: Runtime, core: int) -> None:
        best, batch = self._rate(runtime, core, 1), 2
        while batch <= 64:
            m = self.measure(runtime, core, batch)
            if m is None or m.status != "measured" or self._over(m) or m.rate < 1.03 * best:
                return
            best, batch = m.rate, batch * 2

    def compile_if_worth(self) -> None:
        """Measure compilation of the best eager torch point, where the run is long enough for it to pay."""
        compiled = [r for r in self.options if r.compiled]
        best = self.pick(list(self.points.values()), compiled=False)
        if not compiled or best.runtime.mode != "eager" or not best.rate:
            return
        target = replace(best.runtime, mode="compiled")
        long_run = self.request.run_pixels is not None and (
            self.request.run_pixels / best.rate >= COMPILE_WORTH * TYPICAL_COMPILE_SECONDS
        )
        if target in compiled and (self.request.compile == "on" or self.request.measure_compile or long_run):
            self.measure(target, best.core, best.batch, force=True)

    def pick(self, points: list[Measurement], compiled: bool = True) -> Choice:
        """The cheapest eligible point over the whole run (compiles not yet paid count their setup)."""
        request, allowed = self.request, {r.label: r for r in self.options if compiled or not r.compiled}
        # the screening window only screens: chosen only where nothing larger was measured
        screen = self._screen_core(request.default_core)
        only_screened = all(m.core == screen for m in points if m.runtime in allowed and m.seconds)
        eligible = [
            m
            for m in points
            if m.runtime in allowed
            and m.status == "measured"
            and m.seconds
            and not self._over(m)
            and (m.core == request.core if request.core is not None else m.core != screen or only_screened)
            and m.core % self.geometry.multiple == 0
            and (request.batch is None or m.batch == request.batch)
        ]
        eligible = without_emulated_bf16(eligible, native_bf16(self.device))
        measured = {m.point: m for m in eligible}

        def cost(m: Measurement) -> float:
            # with the image's shape: the evened core's tiles at its measured window time (else m's, scaled)
            runtime = allowed[m.runtime]
            unpaid = runtime.compiled and (request.measure_compile or not is_prepared(self.model, runtime))
            setup = m.setup if unpaid else 0.0
            if request.shape is None or request.core is not None:
                return (request.run_pixels or 1.0) / m.rate + setup
            (height, width), core = request.shape, self.geometry.evened(m.core, request.shape)
            at = measured.get((m.runtime, core, m.batch), m)
            scale = (self.geometry.window(core) / self.geometry.window(at.core)) ** 2
            return math.ceil(math.ceil(height / core) * math.ceil(width / core) / m.batch) * at.seconds * scale + setup

        core, batch = request.core or request.default_core, request.batch or 1
        if not eligible:  # on a numeric path already chosen (one option left), that path, else eager fp32
            fallback = self.options[0] if len(self.options) == 1 else BASELINE
            return Choice(
                fallback, core, batch, f"no candidate measured within the budget: {fallback.label}",
                window=self.geometry.window(core), budget=request.budget, measurements=points,
            )  # fmt: skip
        best = min(eligible, key=cost)
        return Choice(
            allowed[best.runtime], best.core, best.batch,
            f"measured fastest of {len({m.runtime for m in eligible})} runtimes at {len(eligible)} points",
            window=self.geometry.window(best.core), rate=best.rate, peak=best.peak, budget=request.budget,
            measurements=points,
        )  # fmt: skip


__all__ = ["Search"]
