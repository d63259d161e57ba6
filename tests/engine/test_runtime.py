"""Choosing how a network runs: only what the card allows, bf16 only where it measured faster, compilation
only where it pays, measurements cached, and a runtime that fails falling back to eager fp32."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import rasterio
import torch

from tests.engine.nets import checkpoint
from tileseg.engine import SegmentOptions, segment
from tileseg.engine import runtime as rt
from tileseg.engine.runtime import BASELINE, MeasurementCache, Runtime, Tuner
from tileseg.errors import OptionsError


class FakeTimer:
    """Seconds per batch by runtime label (screening and full runs alike); counts its calls."""

    def __init__(self, seconds: dict[str, float], setup: float = 0.0, fail: tuple[str, ...] = ()):
        self.seconds = seconds
        self.setup = setup
        self.fail = fail
        self.calls: list[str] = []

    def __call__(self, model, runtime: Runtime, window, batch, budget):
        self.calls.append(runtime.label)
        if runtime.label in self.fail:
            raise RuntimeError("no kernel for this")
        base = self.seconds[runtime.label]
        return base * (window / 100) ** 2 * batch, (self.setup if runtime.compiled else 0.0)


FAST_BF16 = {
    "fp32/channels_last/eager": 1.0,
    "fp32/contiguous/eager": 1.3,
    "bf16/channels_last/eager": 0.4,
    "bf16/contiguous/eager": 0.6,
    "fp32/channels_last/compiled": 0.7,
    "bf16/channels_last/compiled": 0.3,
    "fp32/contiguous/compiled": 0.9,
    "bf16/contiguous/compiled": 0.5,
}


@pytest.fixture
def model(tmp_path):
    return checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="bf16")


def choose(model, timer, **kwargs):
    kwargs.setdefault("batches", 10)
    return Tuner(cache=None, timer=timer).choose(model, torch.device("cpu"), 100, 4, **kwargs)


def test_auto_never_picks_a_precision_the_card_does_not_allow(tmp_path, monkeypatch):
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)
    fp32_only = checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="fp32")
    timer = FakeTimer(FAST_BF16)
    choice = choose(fp32_only, timer)
    assert choice.runtime.precision == "fp32"
    assert not any(label.startswith("bf16") for label in timer.calls), "bf16 was not even to be measured"
    with pytest.raises(OptionsError):
        rt.candidates(fp32_only.spec, torch.device("cpu"), precision="fp8")


def test_without_native_bf16_bf16_is_taken_only_when_measured_faster(model, monkeypatch):
    monkeypatch.setattr(rt, "native_bf16", lambda device: False)
    slow_bf16 = {**FAST_BF16, "bf16/channels_last/eager": 6.5, "bf16/contiguous/eager": 7.0}
    assert choose(model, FakeTimer(slow_bf16), compile="off").runtime == Runtime("fp32", True, False)
    barely = {**FAST_BF16, "bf16/channels_last/eager": 0.95, "bf16/contiguous/eager": 1.2}
    assert choose(model, FakeTimer(barely), compile="off").runtime.precision == "fp32", "within the margin"
    assert choose(model, FakeTimer(FAST_BF16), compile="off").runtime == Runtime("bf16", True, False)


def test_with_native_bf16_the_fastest_allowed_wins(model, monkeypatch):
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)
    timer = FakeTimer(
        {
            **FAST_BF16,
            "fp32/contiguous/eager": 0.9,
            "fp32/channels_last/eager": 1.1,
            "bf16/channels_last/eager": 2.0,
            "bf16/contiguous/eager": 2.0,
        }
    )
    choice = choose(model, timer, compile="off")
    assert choice.runtime == Runtime("fp32", False, False)
    assert {m.runtime for m in choice.measurements if m.status == "screened out"} == {
        "bf16/channels_last/eager",
        "bf16/contiguous/eager",
    }


def test_compilation_is_measured_and_taken_only_where_it_pays(model, monkeypatch):
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)
    monkeypatch.setattr(rt, "compile_available", lambda device: True)
    timer = FakeTimer(FAST_BF16, setup=30.0)
    short = choose(model, timer, batches=3)
    assert short.runtime == Runtime("bf16", True, False)
    assert not any("compiled" in label for label in timer.calls), "a short run measures no compilation"
    # 1.6 s a batch eager against 1.2 compiled: 1000 batches save 400 s, more than the 30 s of compiling
    long = choose(model, FakeTimer(FAST_BF16, setup=30.0), batches=1000)
    assert long.runtime == Runtime("bf16", True, True)
    middle = choose(model, FakeTimer(FAST_BF16, setup=30.0), batches=50, measure_compile=True)
    assert middle.runtime == Runtime("bf16", True, False), "20 s saved does not pay 30 s of compiling"


def test_fixed_choices_narrow_the_candidates_and_all_fixed_measures_nothing(model, monkeypatch):
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)
    timer = FakeTimer(FAST_BF16)
    assert choose(model, timer, precision="fp32", compile="off").runtime == BASELINE
    assert timer.calls == []
    assert choose(model, timer, precision="fp32").runtime.precision == "fp32"
    assert all(label.startswith("fp32") for label in timer.calls)


def test_a_failing_candidate_is_recorded_and_never_chosen(model, monkeypatch):
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)
    choice = choose(model, FakeTimer(FAST_BF16, fail=("bf16/channels_last/eager",)), compile="off")
    assert choice.runtime == Runtime("bf16", False, False)
    failed = [m for m in choice.measurements if m.status == "failed"]
    assert [m.runtime for m in failed] == ["bf16/channels_last/eager"] and "no kernel" in failed[0].error


def test_cuda_never_gets_bf16_where_the_device_lacks_it(model, monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert rt.allowed_precisions(model.spec, cuda) == ["fp32"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert rt.allowed_precisions(model.spec, cuda) == ["fp32", "bf16"]
    fp16 = replace(model.spec, precision="fp16")
    assert rt.allowed_precisions(fp16, cuda) == ["fp32", "fp16"]
    assert rt.allowed_precisions(fp16, torch.device("cpu")) == ["fp32"]


def test_measurements_are_cached_on_disk_per_checkpoint_and_machine(model, tmp_path, monkeypatch):
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)
    cache = MeasurementCache(tmp_path / "cache" / "runtime.json")
    first = FakeTimer(FAST_BF16)
    chosen = Tuner(cache, first).choose(model, torch.device("cpu"), 100, 4, batches=10, compile="off").runtime
    assert first.calls
    again = FakeTimer({})  # any measurement would fail: a KeyError
    assert Tuner(cache, again).choose(model, torch.device("cpu"), 100, 4, batches=10, compile="off").runtime == chosen
    assert again.calls == []
    (key,) = json.loads(cache.path.read_text())
    fields = json.loads(key)
    assert fields["model"] == rt.model_key(model) and fields["torch"] == torch.__version__
    assert fields["device"]["capability"] == torch.backends.cpu.get_cpu_capability()
    other_window = FakeTimer(FAST_BF16)
    Tuner(cache, other_window).choose(model, torch.device("cpu"), 120, 4, batches=10, compile="off")
    assert other_window.calls, "another window is measured anew"


def test_an_unreadable_cache_is_measured_again(model, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)
    path = tmp_path / "runtime.json"
    path.write_text("{not json")
    timer = FakeTimer(FAST_BF16)
    with caplog.at_level(logging.WARNING):
        Tuner(MeasurementCache(path), timer).choose(model, torch.device("cpu"), 100, 4, batches=10, compile="off")
    assert timer.calls and "unreadable" in caplog.text
    assert json.loads(path.read_text()), "rewritten"


def test_a_runtime_that_fails_during_a_run_falls_back_to_eager_fp32(tmp_path, raster_factory, caplog):
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="bf16")
    plain = model.forward

    def forward(x):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("no bf16 kernel for this operator")
        return plain(x)

    model.forward = forward
    path = raster_factory(40, 50)
    with caplog.at_level(logging.WARNING):
        result = segment(model, path, tmp_path / "out.tif", SegmentOptions(precision="bf16", compile="off"))
    assert result.settings["runtime"] == BASELINE.label
    assert sum("running eager fp32 instead" in r.message for r in caplog.records) == 1, "one log line"
    expected = tmp_path / "ref.tif"
    segment(model, path, expected, SegmentOptions(precision="fp32", compile="off"))
    with rasterio.open(tmp_path / "out.tif") as a, rasterio.open(expected) as b:
        assert np.array_equal(a.read(), b.read())
        assert json.loads(a.tags()["TILESEG_RUNTIME"])["runtime"] == "bf16/channels_last/eager"


def test_auto_runs_measure_once_and_record_the_runtime(tmp_path, raster_factory, monkeypatch):
    monkeypatch.setenv("TILESEG_CACHE_DIR", str(tmp_path / "cache"))
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="bf16")
    path = raster_factory(64, 64)
    result = segment(model, path, tmp_path / "a.tif")
    assert result.settings["runtime"] in {r.label for r in rt.candidates(model.spec, torch.device("cpu"))}
    cached = json.loads((tmp_path / "cache" / "runtime.json").read_text())
    assert len(cached) == 1
    calls = []
    # a new process's tuner (nothing in memory), timing through a recorder: only the disk can answer
    fresh = Tuner(MeasurementCache(), lambda *a: calls.append(a) or (1.0, 0.0))
    monkeypatch.setattr(rt, "_TUNER", fresh)
    again = segment(model, path, tmp_path / "b.tif")
    assert calls == [] and again.settings["runtime"] == result.settings["runtime"]


def test_the_first_process_to_measure_decides_for_the_machine(model, tmp_path, monkeypatch):
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)
    cache = MeasurementCache(tmp_path / "runtime.json")
    fp32_fast = {**FAST_BF16, "fp32/channels_last/eager": 0.1}
    first = Tuner(cache, FakeTimer(fp32_fast)).choose(model, torch.device("cpu"), 100, 4, batches=10, compile="off")
    # a second process that had measured on its own, in memory, before the first wrote the cache
    late = Tuner(cache, FakeTimer(FAST_BF16))
    late._memory[late._key(model, torch.device("cpu"), 100, 4)] = []
    second = late.choose(model, torch.device("cpu"), 100, 4, batches=10, compile="off")
    assert first.runtime == second.runtime == Runtime("fp32", True, False)


def test_prepared_copies_go_with_their_model(tmp_path):
    import gc
    import weakref

    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3)
    assert rt.prepare(model, BASELINE) is model
    copy_ = rt.prepare(model, Runtime("fp32", False, False))
    assert copy_ is not model and rt.is_prepared(model, Runtime("fp32", False, False))
    gone = weakref.ref(model)
    del model, copy_
    gc.collect()
    assert gone() is None, "the engine's cache keeps no model alive"
