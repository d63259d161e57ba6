"""The tuner's search with a fake timer: what it measures, what it chooses, what it refuses, what it caches.

The fake timer says how fast each runtime is at each window and how much memory it takes, so that every rule
is checked without waiting on real kernels: the window is chosen for exact models only, the budget is never
exceeded, emulated bf16 must clearly win, compilation only where it pays, failures never chosen, the cache
answers later processes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

import pytest
import torch

from tests.engine.nets import checkpoint
from tileseg.engine.errors import OptionsError
from tileseg.engine.runtime import runtimes as rt
from tileseg.engine.runtime import search as search_module
from tileseg.engine.runtime import tuner as tn
from tileseg.engine.runtime.cache import MeasurementCache
from tileseg.engine.runtime.choice import Measurement, Request
from tileseg.engine.runtime.runtimes import BASELINE, Runtime
from tileseg.engine.runtime.tuner import Tuner
from tileseg.models.spec import BlendMode

CPU = torch.device("cpu")
MB = 1 << 20

FAST_BF16 = {
    "fp32/channels_last/eager": 1.0,
    "fp32/contiguous/eager": 1.3,
    "bf16/channels_last/eager": 0.4,
    "bf16/contiguous/eager": 0.6,
    "fp32/channels_last/compiled": 0.7,
    "bf16/channels_last/compiled": 0.3,
    "fp32/contiguous/compiled": 0.9,
    "bf16/contiguous/compiled": 0.5,
    "fp32/contiguous/onnxruntime": 1.1,
    "fp32/contiguous/openvino": 1.2,
    "bf16/contiguous/openvino": 0.8,
}


class FakeTimer:
    """Seconds per window pixel by runtime label, times ``speedup(window)``; peak bytes per window pixel."""

    def __init__(self, seconds, setup=0.0, fail=(), speedup=None, bytes_per_pixel=100.0):
        self.seconds, self.setup, self.fail = seconds, setup, fail
        self.speedup = speedup or (lambda window: 1.0)
        self.bytes_per_pixel = bytes_per_pixel
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, model, runtime: Runtime, window, batch, budget):
        self.calls.append((runtime.label, window, batch))
        if runtime.label in self.fail:
            raise RuntimeError("no kernel for this")
        per_pixel = self.seconds[runtime.label] * 1e-4 / self.speedup(window)
        setup = self.setup if runtime.compiled else 0.0
        return per_pixel * window**2 * batch, setup, int(self.bytes_per_pixel * window**2 * batch)

    @property
    def labels(self) -> set[str]:
        return {label for label, _, _ in self.calls}


class SlowTimer(FakeTimer):
    """A :class:`FakeTimer` whose calls take ``delay`` real seconds, whatever the seconds they report: the
    search's bound is wall-clock time."""

    def __init__(self, seconds, delay: float, **kwargs):
        super().__init__(seconds, **kwargs)
        self.delay = delay

    def __call__(self, *args):
        time.sleep(self.delay)
        return super().__call__(*args)


@pytest.fixture
def model(tmp_path):
    return checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="bf16")


@pytest.fixture(autouse=True)
def every_runtime_installed(monkeypatch):
    """The exported runtimes count as installed and torch.compile as available, whatever this machine has."""
    monkeypatch.setattr(rt, "exported_modes", lambda device: ["onnxruntime", "openvino"])
    monkeypatch.setattr(rt, "compile_available", lambda device: True)
    monkeypatch.setattr(search_module, "native_bf16", lambda device: True)
    monkeypatch.setattr(rt, "bf16_kernels", lambda device: True)  # torch's bf16 a candidate on every CPU
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)  # ... and OpenVINO's


def request(model, **kwargs) -> Request:
    geometry = model.spec.geometry
    fields = {"core": geometry.default_tile, "default_core": geometry.default_tile, "batch": 4, "budget": 1 << 40}
    fields.update(run_pixels=10 * 4 * geometry.default_tile**2, compile="off", searchable=True)
    return Request(**{**fields, **kwargs})


def choose(model, timer, seconds=60.0, **kwargs):
    return Tuner(cache=None, timer=timer, seconds=seconds).choose(model, CPU, request(model, **kwargs))


@pytest.fixture(autouse=True)
def every_runtime_invariant(monkeypatch):
    """The fake runtimes are not run: each counts as tile-invariant (tests below check the check itself)."""
    monkeypatch.setattr(tn, "invariance_error", lambda model, runtime, device: None)


def test_auto_never_picks_a_precision_the_card_does_not_allow(tmp_path):
    fp32_only = checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="fp32")
    timer = FakeTimer(FAST_BF16)
    assert choose(fp32_only, timer).runtime.precision == "fp32"
    assert not any(label.startswith("bf16") for label in timer.labels), "bf16 was not even to be measured"
    with pytest.raises(OptionsError, match="fp8"):
        rt.candidates(fp32_only.spec, CPU, precision="fp8")


def test_without_native_bf16_bf16_is_taken_only_when_measured_faster(model, monkeypatch):
    monkeypatch.setattr(search_module, "native_bf16", lambda device: False)
    slow = {k: (6.5 if k.startswith("bf16") else v) for k, v in FAST_BF16.items()}
    assert choose(model, FakeTimer(slow)).runtime == Runtime("fp32", True, "eager")
    barely = {k: (0.95 if k.startswith("bf16") else v) for k, v in FAST_BF16.items()}
    assert choose(model, FakeTimer(barely)).runtime.precision == "fp32", "within the margin"
    assert choose(model, FakeTimer(FAST_BF16)).runtime == Runtime("bf16", True, "eager")


def test_an_exported_runtime_wins_where_it_is_fastest(model):
    fast_onnx = {**FAST_BF16, "fp32/contiguous/onnxruntime": 0.2}
    choice = choose(model, FakeTimer(fast_onnx))
    assert choice.runtime == Runtime("fp32", False, "onnxruntime") and choice.runtime.exported


def test_slow_candidates_are_screened_on_a_small_window(model):
    slow = {**FAST_BF16, "bf16/channels_last/eager": 4.0, "bf16/contiguous/eager": 4.0}  # 10x the best
    timer = FakeTimer(slow)
    choose(model, timer, core=None)
    default_window = model.spec.geometry.window(model.spec.geometry.default_tile)
    measured_big = {label for label, window, _ in timer.calls if window >= default_window}
    assert "bf16/channels_last/eager" not in measured_big, "dropped after the small window"
    assert "fp32/contiguous/openvino" in measured_big, "1.2x slower survives the screen: measured at the run's size"


@pytest.mark.parametrize("faster", [True, False])
def test_of_two_memory_formats_only_the_faster_on_the_screen_goes_on(model, faster):
    """A runtime's two memory formats: the one slower on the screen is not measured at the start core (its point
    there was a second of a first run on an AVX2 EPYC), whichever of the two it is."""
    bf16 = {"bf16/channels_last/eager": 0.4 if faster else 0.5, "bf16/contiguous/eager": 0.5 if faster else 0.4}
    timer = FakeTimer({**FAST_BF16, **bf16})
    choose(model, timer, core=None)
    default_window = model.spec.geometry.window(model.spec.geometry.default_tile)
    measured_big = {label for label, window, _ in timer.calls if window >= default_window}
    kept, dropped = ("channels_last", "contiguous") if faster else ("contiguous", "channels_last")
    assert f"bf16/{kept}/eager" in measured_big and f"bf16/{dropped}/eager" not in measured_big
    assert f"bf16/{dropped}/eager" in timer.labels, "screened, then dropped"


def test_the_window_is_chosen_for_an_exact_model(model):
    geometry = model.spec.geometry
    best_window = geometry.window(96)
    timer = FakeTimer(FAST_BF16, speedup=lambda window: 3.0 if window == best_window else 1.0)
    choice = choose(model, timer, core=None, batch=1)
    assert choice.core == 96 and choice.window == best_window
    assert len({w for _, w, _ in timer.calls}) > 3, "several windows measured"


@pytest.mark.parametrize("grows", [True, False])
def test_the_walk_goes_below_the_start_only_where_nothing_larger_beats_it(model, grows):
    """A rate that grows with the window: once a larger window beats the start, no core below the start is
    measured (one wasted point of every search); a rate that falls with it: the walk goes down."""
    geometry = model.spec.geometry
    start = geometry.default_tile
    timer = FakeTimer(FAST_BF16, speedup=(lambda w: w / 100) if grows else (lambda w: (100 / w) ** 3))
    choice = choose(model, timer, core=None, batch=1)
    below = {w for label, w, _ in timer.calls if label == choice.runtime.label and w < geometry.window(start)}
    screened = {geometry.window(geometry.default_tile // 2)}
    assert (below <= screened) == grows, below
    assert (choice.core > start) == grows


def test_a_larger_window_wins_by_its_smaller_halo_share(model):
    choice = choose(model, FakeTimer(FAST_BF16), core=None, batch=1, seconds=60.0)
    assert choice.core > model.spec.geometry.default_tile, "same kernel speed: a larger core wastes less on the halo"


def test_a_long_run_may_search_its_window_past_the_bound(model):
    """With the bound spent (0 s here), a short run keeps the card's window, and a run expected to last long
    spends up to LONG_RUN_SHARE of its expected time walking it."""

    fast = {label: 1e-6 for label in FAST_BF16}  # billions of pixels a second: a short run lasts microseconds
    default = model.spec.geometry.default_tile
    short = choose(model, SlowTimer(fast, delay=0.002), seconds=0.0, core=None, batch=1, run_pixels=4 * default**2)
    assert short.core == default
    long = choose(model, SlowTimer(fast, delay=0.002), seconds=0.0, core=None, batch=1, run_pixels=10**17)
    assert long.core > default and tn.LONG_RUN_SHARE * 10**17 / long.rate > 1.0


def test_a_first_runs_window_search_measures_only_points_that_end_within_its_bound(model):
    """After the numeric path's search (``ends``), the window's search starts no point expected to end past its
    bound (a first run of unet-aerial on an AVX2 EPYC started a 4.8 s point with 1 s left) and says it is
    unfinished, so later runs go on; without ``ends`` a point starts while the bound lasts. A point's expected
    time counts the setup of its nearest point (compiling a shape), whatever its calls take."""
    openvino = next(r for r in rt.candidates(model.spec, CPU) if r.label == "fp32/contiguous/openvino")
    start = model.spec.geometry.default_tile
    wanted = request(model, core=None, batch=1, run_pixels=None)
    slow = Measurement(openvino.label, start, 1, seconds=10.0, peak=MB)  # 10 s a call at the card's window
    compiles = Measurement(openvino.label, start, 1, seconds=0.01, setup=5.0, peak=MB)  # quick calls, 5 s a shape
    for known in (slow, compiles):
        for ends, measured in ((True, False), (False, True)):
            timer = FakeTimer(FAST_BF16)  # answers at once: only the estimate can hold a point back
            search = search_module.Search(timer, 1.0, model, CPU, [openvino], wanted, [known], ends=ends)
            search.run()
            assert bool(search.new) == measured and search.unfinished == ends, (known, ends, search.new)


def test_a_blended_model_keeps_its_window(model, monkeypatch):
    """The pipeline fixes the core of a blended (or non-equivariant) model: the tuner never moves it."""
    from tileseg.engine.options import SegmentOptions
    from tileseg.engine.tiling import window_is_free

    assert window_is_free(model.spec, SegmentOptions())
    blended = replace(model.spec, geometry=replace(model.spec.geometry, blend=BlendMode.GAUSSIAN))
    assert not window_is_free(blended, SegmentOptions())
    assert not window_is_free(model.spec, SegmentOptions(blend="cosine"))
    assert not window_is_free(model.spec, SegmentOptions(tile=64))
    not_equivariant = replace(model.spec, geometry=replace(model.spec.geometry, equivariant=False))
    assert not window_is_free(not_equivariant, SegmentOptions())
    timer = FakeTimer(FAST_BF16, speedup=lambda window: 5.0 if window != model.spec.geometry.window(32) else 1.0)
    choice = choose(model, timer, core=32, batch=None, searchable=False)
    assert choice.core == 32 and all(m.core == 32 for m in choice.measurements)
    assert {w for _, w, _ in timer.calls} == {model.spec.geometry.window(32)}, "measured where it runs, only"


def test_the_memory_budget_is_never_exceeded(model):
    geometry = model.spec.geometry
    budget = int(100 * geometry.window(64) ** 2)  # 100 bytes a pixel: cores of 64 and below fit
    timer = FakeTimer(FAST_BF16, bytes_per_pixel=100.0)
    choice = choose(model, timer, core=None, batch=None, budget=budget)
    assert choice.peak is not None and choice.peak <= budget
    assert choice.core <= 64 and choice.batch * geometry.window(choice.core) ** 2 * 100 <= budget
    over = [m for m in choice.measurements if m.peak > budget]
    assert len(over) <= 2, "a point estimated over the budget is not even measured"
    assert all(not row["chosen"] for row in choice.table() if row["status"] == "over budget")


def test_the_batch_is_searched_where_it_pays(model):
    class BatchTimer(FakeTimer):
        def __call__(self, model, runtime, window, batch, budget):
            seconds, setup, peak = super().__call__(model, runtime, window, batch, budget)
            return seconds / min(batch, 4) ** 0.5, setup, peak  # a GPU-like gain up to 4

    choice = choose(model, BatchTimer(FAST_BF16), core=32, batch=None)
    assert choice.batch == 4
    assert choose(model, FakeTimer(FAST_BF16), core=32, batch=None).batch == 1, "no gain: batch 1"


def test_compilation_is_a_numeric_path_of_its_own_taken_only_when_asked_for(model):
    pixels = 4 * 32**2  # one batch of the default core
    for run_pixels in (3 * pixels, 10**6 * pixels):  # short and long runs alike: the path does not follow the size
        timer = FakeTimer(FAST_BF16, setup=30.0)
        auto = choose(model, timer, compile="auto", run_pixels=run_pixels)
        assert not auto.runtime.compiled and not any("compiled" in label for label in timer.labels)
    on = choose(model, FakeTimer(FAST_BF16, setup=30.0), compile="on", run_pixels=3 * pixels)
    assert on.runtime == Runtime("bf16", True, "compiled")


def test_fixed_choices_narrow_the_candidates_and_all_fixed_measures_nothing(model):
    timer = FakeTimer(FAST_BF16)
    assert choose(model, timer, precision="fp32", runtime="torch").runtime == BASELINE
    assert timer.calls == []
    assert choose(model, timer, precision="fp32").runtime.precision == "fp32"
    assert all(label.startswith("fp32") for label in timer.labels)
    only_onnx = FakeTimer(FAST_BF16)
    assert choose(model, only_onnx, runtime="onnxruntime").runtime.mode == "onnxruntime"
    assert only_onnx.calls == [], "one candidate left: nothing to measure"


def test_a_failing_candidate_is_recorded_and_never_chosen(model):
    choice = choose(model, FakeTimer(FAST_BF16, fail=("bf16/channels_last/eager",)))
    assert choice.runtime == Runtime("bf16", False, "eager")
    failed = [m for m in choice.measurements if m.status == "failed"]
    assert {m.runtime for m in failed} == {"bf16/channels_last/eager"} and "no kernel" in failed[0].error


def test_nothing_measurable_falls_back_to_eager_fp32(model):
    choice = choose(model, FakeTimer(FAST_BF16, fail=tuple(FAST_BF16)))
    assert choice.runtime == BASELINE and "no candidate measured" in choice.reason


def test_a_window_search_cut_short_goes_on_in_later_runs(model, tmp_path):
    """A first run whose bound is spent keeps what it has; each later run measures on from the cached points
    until the walk is done, ending where one unbounded search ends; then nothing more is measured."""

    # one path walked; fake seconds of a fast machine: the run lasts 0.1 s, too short to extend any bound
    speeds = {"fp32/contiguous/openvino": 1e-6, "fp32/contiguous/onnxruntime": 2e-6}
    runs = dict(core=None, batch=1, run_pixels=10**9, budget=40 * MB)  # the budget ends the walk: windows to 632
    whole = Tuner(None, SlowTimer(speeds, delay=0.005), seconds=60.0).choose(model, CPU, request(model, **runs))
    cache = MeasurementCache(tmp_path / "runtime.json")
    timers, choices = [], []
    for _ in range(60):
        timers.append(SlowTimer(speeds, delay=0.005))
        choices.append(Tuner(cache, timers[-1], seconds=0.02).choose(model, CPU, request(model, **runs)))
        if not timers[-1].calls:
            break
    assert len(timers) > 3 and not timers[-1].calls, "several runs, each a few points, then none"
    assert "goes on in later runs" in choices[0].reason and "goes on" not in choices[-1].reason
    # where one unbounded search ends, within its finest steps (a walk resumed refines from where it stood)
    assert choices[-1].runtime == whole.runtime and choices[-1].rate >= 0.98 * whole.rate
    # the first run's one point past the start was the jump to the largest core that fits: already the best here
    assert choices[0].rate >= 0.98 * whole.rate and choices[0].measured <= 4
    shown = Tuner(cache, FakeTimer({}), seconds=0.02).choose(model, CPU, request(model, **runs), measure=False)
    assert shown.core == choices[-1].core


def test_the_window_walk_goes_up_to_the_budgets_edge(model):
    """A ladder step whose estimated peak is over the budget does not end the walk a whole step short of it: the
    last step up is the largest core that fits (the refinement that might get there runs only while time lasts,
    and a walk cut short goes on in later runs without it; on an AVX2 EPYC OpenVINO's rate still grew there)."""
    openvino = Runtime.from_label("fp32/contiguous/openvino")
    geometry, timer = model.spec.geometry, FakeTimer({openvino.label: 1.0}, bytes_per_pixel=100.0)
    search = search_module.Search(timer, 60.0, model, CPU, [openvino], request(model, core=None, batch=1), [])
    ladder = [geometry.default_tile]
    while len(ladder) < 5:
        ladder.append(search._step(ladder[-1], True))
    # the largest core that fits lies between two ladder steps, far enough above the lower one to be a step
    edge = (ladder[3] + ladder[4]) // 2 // geometry.multiple * geometry.multiple
    assert edge >= ladder[3] * search_module.EDGE_STEP
    budget = 100 * geometry.window(edge) ** 2  # the fake timer's 100 bytes a window pixel
    search.request = replace(search.request, budget=budget)
    for _ in search._walk(openvino, geometry.default_tile, 1):
        pass
    cores = {m.core for m in search.new}
    assert max(cores) == edge and ladder[3] in cores, "the ladder up to the last step that fits, then the edge"
    assert all(m.peak <= budget for m in search.new), "nothing past the budget is measured"


def test_the_walk_jumps_first_to_the_largest_core_a_call_and_the_budget_allow(model):
    """A walk's first point is the largest core whose call takes at most JUMP_SECONDS (at the start's seconds per
    window pixel; JUMP_SHARE of the run's time, if shorter) and whose estimated peak fits: a first run whose bound
    allows one point past the start runs on at a large window (on an AVX2 EPYC it had run on at the ladder's
    second step, 3-4 s slower on 4096²). A short run does not jump."""
    openvino = Runtime.from_label("fp32/contiguous/openvino")
    geometry, multiple = model.spec.geometry, model.spec.geometry.multiple
    start = geometry.default_tile
    per_pixel = 1e-4  # the fake timer's seconds a window pixel at speed 1.0
    speed = search_module.JUMP_SECONDS / (per_pixel * geometry.window(600) ** 2)  # 2 s a call at core 600

    def first_point(budget: int, run_pixels: int | None = None) -> int:
        timer = FakeTimer({openvino.label: speed}, bytes_per_pixel=100.0)
        asked = request(model, core=None, batch=1, run_pixels=run_pixels, budget=budget)
        search = search_module.Search(timer, 60.0, model, CPU, [openvino], asked, [])
        search.measure(openvino, start, 1)
        next(search._walk(openvino, start, 1))
        return search.new[1].core

    # the call's time bounds it: the largest core whose window takes at most JUMP_SECONDS
    core = first_point(1 << 40)
    assert core == 600 // multiple * multiple
    assert per_pixel * speed * geometry.window(core + multiple) ** 2 > search_module.JUMP_SECONDS
    # the budget bounds it: the largest core whose estimated peak (100 bytes a window pixel) fits
    assert first_point(100 * geometry.window(320) ** 2) == 320
    # so does a run of JUMP_SECONDS / JUMP_SHARE at the start's rate; one of ten start calls takes the first step
    rate = start**2 / (per_pixel * speed * geometry.window(start) ** 2)
    long_run = rate * search_module.JUMP_SECONDS / search_module.JUMP_SHARE
    assert first_point(1 << 40, run_pixels=int(1.01 * long_run)) == core
    assert first_point(1 << 40, run_pixels=int(0.9 * long_run)) < core
    first = search_module.Search(FakeTimer({}), 1, model, CPU, [openvino], request(model), [])._step(start, True)
    assert first_point(1 << 40, run_pixels=10 * start**2) == first
    # within the ladder's first two steps there is nothing to jump to
    second = search_module.Search(FakeTimer({}), 1, model, CPU, [openvino], request(model), [])._step(first, True)
    assert first_point(100 * geometry.window(second) ** 2) == first


def test_the_runtimes_walked_share_the_bound(model):
    """Two runtimes close at the card's window, one twice as fast at larger windows: it becomes the path even
    when the bound is too short to walk both one after the other (on an AVX2 EPYC, ONNX Runtime walked first
    took the whole bound, and OpenVINO, 2.3x faster at large windows, was never walked)."""
    ort, openvino = "fp32/contiguous/onnxruntime", "fp32/contiguous/openvino"
    default_window = model.spec.geometry.window(model.spec.geometry.default_tile)

    class Turning(FakeTimer):  # a real 20 ms a point for the two runtimes (the others fail at once)
        def __call__(self, model, runtime, window, batch, budget):
            if runtime.label in self.seconds:
                time.sleep(0.02)
            seconds, setup, peak = super().__call__(model, runtime, window, batch, budget)
            faster = 2.0 if runtime.label == openvino and window > default_window else 1.0
            return seconds / faster, setup, peak

    timer = Turning({ort: 1.0, openvino: 1.1})
    # the screen and the start are measured whatever the bound (4 points, 80 ms); then about 3 more points
    choice = choose(model, timer, seconds=0.15, core=None, batch=1)
    walked = {label for label, window, _ in timer.calls if window > default_window}
    assert walked == {ort, openvino}, "each walked a step at least"
    assert choice.runtime.label == openvino


def test_the_path_is_chosen_on_every_walked_runtimes_jump_whatever_the_bound(model):
    """The runtimes walked for the numeric path are each measured at their jump point, even past the bound: two
    runtimes tied at the card's window and apart at large ones must be compared where runs go on (on an AVX2
    EPYC, PyTorch and OpenVINO tied at window 576; PyTorch walked first took the bound with its jump, OpenVINO
    got no point past the card's window, and the path became PyTorch's, at half of OpenVINO's rate at 1216)."""
    ort, openvino = "fp32/contiguous/onnxruntime", "fp32/contiguous/openvino"
    default_window = model.spec.geometry.window(model.spec.geometry.default_tile)

    class Turning(SlowTimer):  # 0.1 s a point: the bound (0.45 s) ends after the screen, the start and a jump
        def __call__(self, model, runtime, window, batch, budget):
            seconds, setup, peak = super().__call__(model, runtime, window, batch, budget)
            faster = 2.0 if runtime.label == openvino and window > default_window else 1.0
            return seconds / faster, setup, peak

    bound = 0.45
    # a call at the card's window takes a tenth of the jump's (a third of the bound)
    speed = bound / 3 / 10 / (1e-4 * default_window**2)
    timer = Turning({ort: speed, openvino: 1.1 * speed}, delay=0.1)
    choice = choose(model, timer, seconds=bound, core=None, batch=1)
    jumped = {label for label, window, _ in timer.calls if window >= 2 * default_window}
    assert jumped == {ort, openvino}
    assert choice.runtime.label == openvino
    # the jump is a call of at most a third of the bound, at most PATH_JUMP_REACH times the start core
    largest = max(w for _, w, _ in timer.calls)
    assert largest**2 * speed * 1e-4 <= bound / 3
    assert largest <= model.spec.geometry.window(search_module.PATH_JUMP_REACH * model.spec.geometry.default_tile)


def test_measurements_are_cached_on_disk_per_checkpoint_machine_and_versions(model, tmp_path):
    cache = MeasurementCache(tmp_path / "cache" / "runtime.json")
    first = FakeTimer(FAST_BF16)
    chosen = Tuner(cache, first, seconds=5).choose(model, CPU, request(model, core=None))
    assert first.calls
    again = FakeTimer({})  # any measurement would fail: a KeyError
    later = Tuner(cache, again, seconds=5).choose(model, CPU, request(model, core=None))
    assert again.calls == [] and (later.runtime, later.core, later.batch) == (chosen.runtime, chosen.core, chosen.batch)
    (key,) = json.loads(cache.path.read_text())
    fields = json.loads(key)
    assert fields["model"] == tn.model_key(model) and fields["versions"]["torch"] == torch.__version__
    assert "onnxruntime" in fields["versions"] or "onnx" not in fields["versions"]
    assert fields["device"]["capability"] == torch.backends.cpu.get_cpu_capability()
    other = FakeTimer(FAST_BF16)
    Tuner(cache, other, seconds=5).choose(model, CPU, request(model, core=48, batch=3))
    assert other.calls and {label for label, _, _ in other.calls} == {chosen.runtime.label}, (
        "another fixed tile and batch is a search of its own, on the numeric path"
    )


def test_a_choice_is_shown_without_measuring_only_once_searched(model, tmp_path):
    cache = MeasurementCache(tmp_path / "runtime.json")
    timer = FakeTimer(FAST_BF16)
    assert Tuner(cache, timer).choose(model, CPU, request(model), measure=False) is None and timer.calls == []
    made = Tuner(cache, timer).choose(model, CPU, request(model))
    shown = Tuner(cache, FakeTimer({})).choose(model, CPU, request(model), measure=False)
    assert shown.summary() == made.summary()


def test_an_unreadable_cache_is_measured_again(model, tmp_path, caplog):
    path = tmp_path / "runtime.json"
    path.write_text("{not json")
    timer = FakeTimer(FAST_BF16)
    with caplog.at_level(logging.WARNING):
        Tuner(MeasurementCache(path), timer).choose(model, CPU, request(model))
    assert timer.calls and "unreadable" in caplog.text
    assert json.loads(path.read_text()), "rewritten"


def test_the_first_process_to_measure_decides_for_the_machine(model, tmp_path):
    cache = MeasurementCache(tmp_path / "runtime.json")
    fp32_fast = {**FAST_BF16, "fp32/channels_last/eager": 0.1}
    first = Tuner(cache, FakeTimer(fp32_fast)).choose(model, CPU, request(model))
    # a second process that had measured on its own, in memory, before the first wrote the cache
    late = Tuner(cache, FakeTimer(FAST_BF16))
    second = late.choose(model, CPU, request(model))
    assert first.runtime == second.runtime == Runtime("fp32", True, "eager")


def test_the_search_stops_at_its_bound(model):
    timer = FakeTimer({label: seconds * 1e-6 for label, seconds in FAST_BF16.items()})  # a run of microseconds
    choice = choose(model, timer, core=None, batch=None, seconds=0.0)
    walked = {w for _, w, _ in timer.calls}
    geometry = model.spec.geometry
    assert walked <= {geometry.window(32), geometry.window(16)}, "past its bound: the screen and the start only"
    assert choice.core in (16, 32)


# small windows: OpenVINO bf16 fastest; large windows: torch bf16 (as measured on the AVX-512-bf16 VM)
def crossing(window: int, label: str) -> float:
    small = window <= 100
    return 3.0 if (label == "bf16/contiguous/openvino") == small else 1.0


class CrossingTimer(FakeTimer):
    def __call__(self, model, runtime, window, batch, budget):
        seconds, setup, peak = super().__call__(model, runtime, window, batch, budget)
        return seconds / crossing(window, runtime.label), setup, peak


def test_the_numeric_path_is_chosen_once_whatever_the_tile_batch_or_run_size(model, tmp_path):
    """The runtime that decides the values is the same for every fixed tile, batch and run size: only the
    window and the batch change within it (the mask then never depends on --tile)."""
    cache = MeasurementCache(tmp_path / "runtime.json")
    timer = CrossingTimer(FAST_BF16)
    tuner = Tuner(cache, timer, seconds=60.0)
    chosen = {
        (core, batch, size): tuner.choose(model, CPU, request(model, core=core, batch=batch, run_pixels=size)).runtime
        for core in (None, 16, 32, 64)
        for batch in (None, 1, 4)
        for size in (10**4, 10**8)
    }
    assert len(set(chosen.values())) == 1, chosen
    # and another process reading the cache takes the same path for a tile it never measured
    again = Tuner(cache, CrossingTimer(FAST_BF16), seconds=60.0).choose(model, CPU, request(model, core=48, batch=2))
    assert again.runtime == next(iter(chosen.values())) and "numeric path" in again.reason


def test_a_runtime_that_is_not_tile_invariant_is_refused_and_recorded(model, tmp_path, monkeypatch):
    fastest = "bf16/channels_last/eager"
    refused = []

    def checker(model, runtime, device):
        refused.append(runtime.label)
        return "not tile-invariant: made so on purpose" if runtime.label == fastest else None

    monkeypatch.setattr(tn, "invariance_error", checker)
    cache = MeasurementCache(tmp_path / "runtime.json")
    choice = Tuner(cache, FakeTimer(FAST_BF16)).choose(model, CPU, request(model, core=None))
    assert refused[0] == fastest and choice.runtime.label != fastest
    assert json.loads(cache.path.read_text()).popitem()[1]["refused"] == {
        fastest: "not tile-invariant: made so on purpose"
    }
    never = Tuner(cache, FakeTimer(FAST_BF16)).choose(model, CPU, request(model, core=16, batch=1))
    assert never.runtime.label != fastest


def test_the_check_sees_a_runtime_whose_values_depend_on_the_window(model, monkeypatch):
    """The real check, on a real network: eager fp32 passes; the same network made to answer differently in
    small windows (as a kernel chosen by shape could) fails, naming how many pixels differ."""
    from tileseg.engine.runtime import path as path_module

    assert path_module.invariance_error(model, BASELINE, CPU) is None
    real = path_module.run_forward

    def window_dependent(model, runtime, x, device):
        out = real(model, runtime, x, device)
        if x.shape[-1] < model.spec.geometry.window(2 * path_module.CHECK_CORE):
            out = out.clone()
            out[:, 0] += 0.5 * out.abs().max()  # class 0 wins more often in small windows
        return out

    monkeypatch.setattr(path_module, "run_forward", window_dependent)
    why = path_module.invariance_error(model, BASELINE, CPU)
    assert why is not None and why.startswith("not tile-invariant") and "pixels" in why


def test_the_budget_covers_the_band_that_the_image_width_implies(model):
    """Same kernel speed at every window (so the larger, the better): on a narrow image the core grows; on a
    very wide one the band of tile rows it would hold (core x row_bytes) bounds it within the same budget."""
    budget = 64 * MB
    narrow = choose(model, FakeTimer(FAST_BF16), core=None, batch=1, budget=budget, row_bytes=0)
    wide = choose(model, FakeTimer(FAST_BF16), core=None, batch=1, budget=budget, row_bytes=budget // 100)
    assert wide.core < narrow.core
    assert (wide.peak or 0) + wide.core * (budget // 100) <= budget
    assert wide.runtime == narrow.runtime, "the numeric path does not follow the image's width"


def test_a_run_holds_labels_and_validity_per_pixel_and_probabilities_when_kept(model):
    from tileseg.engine.options import SegmentOptions

    k = model.spec.num_classes
    assert tn.row_bytes_per_pixel(model.spec, SegmentOptions(), probabilities=False) == 2
    assert tn.row_bytes_per_pixel(model.spec, SegmentOptions(), probabilities=True) == 2 + 4 * k
    assert tn.row_bytes_per_pixel(model.spec, SegmentOptions(blend="gaussian"), probabilities=False) == 2 + 4 * k
    request = tn.runtime_request(model, CPU, SegmentOptions(), 10**6, width=100_000)
    assert request.row_bytes == 200_000


def test_the_budget_counts_what_decoding_objects_holds():
    """Decoding objects holds several arrays per pixel of a strip: the window must be chosen with them counted
    (at 8192² with --objects the peak went from 2.5 GB to 1.5 GB once they were)."""
    from tileseg import models
    from tileseg.engine import SegmentOptions
    from tileseg.engine.outputs import object_bytes_per_pixel

    model = models.load("unet-nuclei")
    assert object_bytes_per_pixel(model.spec) == 0
    labels = object_bytes_per_pixel(model.spec, instances="labels.tif")
    table = object_bytes_per_pixel(model.spec, instances="labels.tif", objects="objects.csv")
    assert 0 < labels < table
    plain = tn.runtime_request(model, CPU, SegmentOptions(), None, 1000, True)
    held = tn.runtime_request(model, CPU, SegmentOptions(), None, 1000, True, table)
    assert held.row_bytes == plain.row_bytes + 1000 * table


def test_a_core_is_priced_as_the_run_takes_it_evened_out_over_the_image(model):
    geometry = model.spec.geometry
    step = geometry.multiple
    fits, faster = 16 * step, 15 * step  # the image is two cores of ``fits`` a side; ``faster`` needs three
    runtime = Runtime("bf16", True, "eager")

    def point(core: int, rate: float) -> Measurement:
        return Measurement(runtime.label, core, 1, seconds=core**2 / rate)

    points = [point(fits, 1.0e6), point(faster, 1.2e6)]  # ``faster`` turns out 20 % more pixels a second
    shape = (2 * fits, 2 * fits)
    sized = request(model, core=None, batch=None, run_pixels=shape[0] * shape[1], shape=shape)
    search = search_module.Search(FakeTimer(FAST_BF16), 1.0, model, CPU, [runtime], sized, [])
    assert search.pick(points).core == fits  # 4 windows of fits + 2 halos, not 9 of a smaller evened core
    blind = search_module.Search(FakeTimer(FAST_BF16), 1.0, model, CPU, [runtime], replace(sized, shape=None), [])
    assert blind.pick(points).core == faster  # by the rate alone: what the run's shape changes
