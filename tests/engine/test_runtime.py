"""Runtimes as runs use them: the candidates a card and a device allow, a runtime failing mid-run falling back
to eager fp32, exported programs checked against eager before use, the choice recorded and cached, and the
window chosen by the tuner giving the mask a fixed tile gives."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import rasterio
import torch

from tests.engine.nets import checkpoint
from tileseg import models
from tileseg.engine import SegmentOptions, segment
from tileseg.engine.errors import OptionsError
from tileseg.engine.runtime import export as ex
from tileseg.engine.runtime import forward as fw
from tileseg.engine.runtime import runtimes as rt
from tileseg.engine.runtime import tuner as tn
from tileseg.engine.runtime.cache import MeasurementCache
from tileseg.engine.runtime.runtimes import BASELINE, Runtime
from tileseg.engine.runtime.tuner import Tuner

CPU = torch.device("cpu")


def test_cuda_never_gets_bf16_where_the_device_lacks_it(tmp_path, monkeypatch):
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="bf16")
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert rt.allowed_precisions(model.spec, cuda) == ["fp32"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert rt.allowed_precisions(model.spec, cuda) == ["fp32", "bf16"]
    fp16 = replace(model.spec, precision="fp16")
    assert rt.allowed_precisions(fp16, cuda) == ["fp32", "fp16"]
    assert rt.allowed_precisions(fp16, CPU) == ["fp32"]


def test_exported_candidates_only_for_checkpoints_and_installed_runtimes(tmp_path, monkeypatch):
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="bf16")
    monkeypatch.setattr(rt, "exported_modes", lambda device: ["onnxruntime"])
    labels = {r.label for r in rt.candidates(model.spec, CPU)}
    assert "fp32/contiguous/onnxruntime" in labels and "bf16/contiguous/onnxruntime" not in labels
    assert not any(r.exported for r in rt.candidates(model.spec, CPU, exportable=False))
    with pytest.raises(OptionsError, match="openvino.*not installed"):
        rt.candidates(model.spec, CPU, runtime="openvino")
    with pytest.raises(OptionsError, match="unknown runtime"):
        rt.candidates(model.spec, CPU, runtime="tvm")
    assert {r.mode for r in rt.candidates(model.spec, CPU, runtime="torch", compile="off")} == {"eager"}


def test_bf16_without_kernels_or_hardware_for_it_is_tried_only_when_asked_for(tmp_path, monkeypatch):
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="bf16")
    monkeypatch.setattr(rt, "exported_modes", lambda device: ["openvino"])
    monkeypatch.setattr(rt, "compile_available", lambda device: True)
    monkeypatch.setattr(rt, "bf16_kernels", lambda device: True)
    monkeypatch.setattr(rt, "native_bf16", lambda device: True)
    with_kernels = {r.label for r in rt.candidates(model.spec, CPU)}
    assert {"bf16/channels_last/eager", "bf16/contiguous/eager", "bf16/channels_last/compiled"} <= with_kernels
    assert "bf16/contiguous/openvino" in with_kernels
    monkeypatch.setattr(rt, "bf16_kernels", lambda device: False)  # an AVX2-only CPU: emulated bf16
    monkeypatch.setattr(rt, "native_bf16", lambda device: False)
    without = {r.label for r in rt.candidates(model.spec, CPU)}
    # OpenVINO's bf16 hint computes in fp32 there: a candidate that would only repeat its fp32
    assert without == {label for label in with_kernels if not label.startswith("bf16/")}
    assert "fp32/contiguous/openvino" in without and "fp32/channels_last/eager" in without
    asked = {r.label for r in rt.candidates(model.spec, CPU, precision="bf16", runtime="torch", compile="off")}
    assert asked == {"bf16/channels_last/eager", "bf16/contiguous/eager"}  # by name: the user's call
    asked = {r.label for r in rt.candidates(model.spec, CPU, precision="bf16", runtime="openvino")}
    assert asked == {"bf16/contiguous/openvino"}


def test_logits_agree_within_the_tolerance_or_where_the_margin_is_clear():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    assert ex.logits_agree(ref, ref + 5e-5)[0]
    assert not ex.logits_agree(ref, -ref)[0], "every clear pixel changes class"
    tie = np.zeros_like(ref)
    tie[:, 0] = 1.0
    tie[:, 1] = 1.0 - 1e-4  # a near tie: either class is fair
    swapped = tie.copy()
    swapped[:, 1] = 1.0 + 1e-4
    assert ex.logits_agree(tie, swapped)[0]


def test_every_runtime_checked_is_compared_with_one_eager_run_per_probe_window(tmp_path):
    """The second runtime a first run checks reuses eager fp32's logits on the probe windows (0.6 s of each check
    on an AVX2 EPYC); a check that differs is still refused."""
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3)
    calls: list[int] = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[-1]))
    assert "logits within" in ex.check_against_eager(model, lambda x: model(x), CPU)
    assert "logits within" in ex.check_against_eager(model, lambda x: model(x) + 1e-6, CPU)
    windows = ex.probe_windows(model)
    assert sorted(calls) == sorted(windows * 3), "eager once a window, then each checked program's own calls"
    with pytest.raises(ex.ExportMismatch, match=f"at {windows[0]} px"):
        ex.check_against_eager(model, lambda x: -model(x), CPU)


def test_an_export_that_differs_from_eager_is_refused_and_never_chosen(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnx extra is part of the test set-up")
    monkeypatch.setenv("TILESEG_CACHE_DIR", str(tmp_path / "cache"))
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3)
    real = ex.OnnxRuntimeForward.__call__
    monkeypatch.setattr(ex.OnnxRuntimeForward, "__call__", lambda self, x: real(self, x) * -1.0)
    with pytest.raises(ex.ExportMismatch, match="differs from eager fp32"):
        ex.exported_forward(model, Runtime("fp32", False, "onnxruntime"))
    choice = Tuner(cache=None, seconds=60).choose(
        model,
        CPU,
        tn.Request(core=32, default_core=32, batch=1, budget=1 << 30, precision="fp32", compile="off"),
    )
    failed = {m.runtime: m.error for m in choice.measurements if m.status == "failed"}
    assert "ExportMismatch" in failed["fp32/contiguous/onnxruntime"] and choice.runtime.mode != "onnxruntime"


def test_onnx_runtime_gives_eager_fp32_mask_for_a_shipped_model(tmp_path, monkeypatch, data_dir):
    """A shipped model through ONNX Runtime (exported once, cached, checked) and through PyTorch: one mask."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is part of the test set-up")
    monkeypatch.setenv("TILESEG_CACHE_DIR", str(tmp_path / "cache"))
    model = models.load("unet-aerial", device=CPU)
    source = data_dir / "geotiff" / "RGB.byte.tif"
    out = {}
    for name in ("torch", "onnxruntime"):
        options = SegmentOptions(precision="fp32", runtime=name, tile=256, batch=2, compile="off")
        result = segment(model, source, tmp_path / f"{name}.tif", options)
        assert result.runtime.runtime.endswith("/eager" if name == "torch" else "/onnxruntime")
        with rasterio.open(tmp_path / f"{name}.tif") as dst:
            out[name] = dst.read(1)
            tags = json.loads(dst.tags()["TILESEG_RUNTIME"])
        assert tags["runtime"] == result.runtime.runtime and tags["window"] == model.spec.geometry.window(256)
    assert np.array_equal(out["torch"], out["onnxruntime"])
    assert list((tmp_path / "cache" / "exports").glob("*.onnx")), "the export is cached"


@pytest.mark.parametrize("runtime", ["fp32/openvino", "bf16/openvino", "fp32/onnxruntime"])
def test_labels_inside_the_program_are_the_argmax_of_its_logits(tmp_path, monkeypatch, data_dir, runtime):
    """A labels-only run of an exported runtime scales the raw windows and takes the winning class inside the
    program: on windows of a real image (uint8, and as float values clipped and stretched) its labels are those
    of the same program's logits scaled and reduced on the host, a batch padded to full included."""
    precision, mode = runtime.split("/")
    pytest.importorskip(mode, reason="ONNX Runtime and OpenVINO are part of the default install on x86-64")
    from rasterio.windows import Window

    from tileseg.engine.batches import BatchRunner
    from tileseg.engine.io.bands import stretch_scaling, uint8_scaling
    from tileseg.engine.tiling import TileSettings

    monkeypatch.setenv("TILESEG_CACHE_DIR", str(tmp_path / "cache"))
    model = models.load("unet-aerial", device=CPU)
    runtime = Runtime(precision, False, mode)
    settings = TileSettings(model.spec.geometry, core=192, batch=2)
    with rasterio.open(data_dir / "geotiff" / "RGB.byte.tif") as src:
        raw = np.stack([src.read(window=Window(x, 150, settings.window, settings.window)) for x in (100, 300)])
    spec = model.spec
    floats = raw.astype(np.float32) * 3.5 - 20.0
    floats[0, 1, :4, :4] = np.nan
    stretched = stretch_scaling(spec, np.array([10.0, 40.0, 0.0]), np.array([700.0, 800.0, 850.0]), clip=True)
    for batch, scaling in ((raw, uint8_scaling(spec)), (floats, stretched), (raw[:1], uint8_scaling(spec))):
        inside = BatchRunner(model, settings, scaling, CPU, runtime)
        outside = BatchRunner(model, settings, scaling, CPU, runtime)
        outside.in_program = False
        labels, expected = inside(batch).labels, outside(batch).labels
        assert labels.shape == expected.shape == (len(batch), 192, 192)
        assert np.array_equal(labels, expected)
        assert len(np.unique(expected)) > 1, "a real scene: more than one class"
    program = fw.prepare(model, runtime)
    made = program.compiled if mode == "openvino" else {(None, labels, raw) for raw, labels in program.sessions}
    assert any(labels == "uint8" for _, labels, _ in made), "the labels came from the program"


def test_labels_inside_the_program_fall_back_to_the_host_when_it_fails(tmp_path, monkeypatch, data_dir, caplog):
    pytest.importorskip("openvino", reason="OpenVINO is part of the default install on x86-64")
    monkeypatch.setenv("TILESEG_CACHE_DIR", str(tmp_path / "cache"))
    model = models.load("unet-aerial", device=CPU)
    source = data_dir / "geotiff" / "RGB.byte.tif"
    options = SegmentOptions(precision="fp32", runtime="openvino", tile=256, batch=2, compile="off")
    segment(model, source, tmp_path / "inside.tif", options)

    def fails(*args, **kwargs):
        raise RuntimeError("no such operator")

    monkeypatch.setattr(ex.OpenVinoForward, "labels", fails)
    with caplog.at_level(logging.WARNING):
        result = segment(model, source, tmp_path / "outside.tif", options)
    assert result.runtime.runtime == "fp32/contiguous/openvino", "the same numeric path, reduced on the host"
    assert sum("inside the program failed" in r.message for r in caplog.records) == 1
    with rasterio.open(tmp_path / "inside.tif") as a, rasterio.open(tmp_path / "outside.tif") as b:
        assert np.array_equal(a.read(), b.read())


def test_tile_auto_gives_the_mask_of_a_fixed_tile_for_an_exact_model(tmp_path, monkeypatch, raster_factory):
    monkeypatch.setenv("TILESEG_CACHE_DIR", str(tmp_path / "cache"))
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3)
    path = raster_factory(150, 230)
    auto = segment(model, path, tmp_path / "auto.tif", SegmentOptions(precision="fp32", runtime="torch"))
    fixed = segment(model, path, tmp_path / "fixed.tif", SegmentOptions(precision="fp32", runtime="torch", tile=16))
    assert fixed.runtime.tile == 16
    with rasterio.open(tmp_path / "auto.tif") as a, rasterio.open(tmp_path / "fixed.tif") as b:
        assert np.array_equal(a.read(), b.read())
    assert auto.runtime.tuning["tile"] >= 16


def test_a_runtime_that_fails_during_a_run_falls_back_to_eager_fp32(tmp_path, raster_factory, caplog):
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="bf16")
    plain = model.forward

    def forward(x):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("no bf16 kernel for this operator")
        return plain(x)

    model.forward = forward
    path = raster_factory(40, 50)
    fixed = {"compile": "off", "runtime": "torch", "tile": 32, "batch": 4}
    with caplog.at_level(logging.WARNING):
        result = segment(model, path, tmp_path / "out.tif", SegmentOptions(precision="bf16", **fixed))
    assert result.runtime.runtime == BASELINE.label
    assert sum("running eager fp32 instead" in r.message for r in caplog.records) == 1, "one log line"
    expected = tmp_path / "ref.tif"
    segment(model, path, expected, SegmentOptions(precision="fp32", **fixed))
    with rasterio.open(tmp_path / "out.tif") as a, rasterio.open(expected) as b:
        assert np.array_equal(a.read(), b.read())
        assert json.loads(a.tags()["TILESEG_RUNTIME"])["runtime"] == "bf16/channels_last/eager"


def test_auto_runs_measure_once_and_record_the_runtime(tmp_path, raster_factory, monkeypatch):
    monkeypatch.setenv("TILESEG_CACHE_DIR", str(tmp_path / "cache"))
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="bf16")
    path = raster_factory(64, 64)
    result = segment(model, path, tmp_path / "a.tif")
    assert result.runtime.runtime in {r.label for r in rt.candidates(model.spec, CPU)}
    cached = json.loads((tmp_path / "cache" / "runtime.json").read_text())
    assert len(cached) == 1
    calls = []
    # a new process's tuner (nothing in memory), timing through a recorder: only the disk can answer
    fresh = Tuner(MeasurementCache(), lambda *a: calls.append(a) or (1.0, 0.0, None))
    monkeypatch.setattr(tn, "_TUNER", fresh)
    again = segment(model, path, tmp_path / "b.tif")
    assert calls == [] and again.runtime.runtime == result.runtime.runtime
    assert again.runtime.tuning == result.runtime.tuning


def test_prepared_copies_go_with_their_model(tmp_path):
    import gc
    import weakref

    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3)
    assert fw.prepare(model, BASELINE) is model
    contiguous = Runtime("fp32", False, "eager")
    copy_ = fw.prepare(model, contiguous)
    assert copy_ is not model and fw.is_prepared(model, contiguous)
    gone = weakref.ref(model)
    del model, copy_
    gc.collect()
    assert gone() is None, "the engine's cache keeps no model alive"


def test_the_measured_peak_grows_with_the_window(tmp_path):
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3)
    _, _, small = tn.time_forward(model, BASELINE, 64, 1, 0.05)
    _, _, large = tn.time_forward(model, BASELINE, 1024, 1, 0.05)
    if small is None:
        pytest.fail("peak memory cannot be measured here (/proc/self/clear_refs)")
    assert large > small and large > 1024**2 * 4 * 4, "at least the first layer's activations"


def test_an_export_is_keyed_by_the_serving_options(tmp_path, monkeypatch):
    """A pruned U-Net++ is another graph from the same checkpoint: it must never run the full network's export."""
    monkeypatch.setenv("TILESEG_CACHE_DIR", str(tmp_path))
    full, pruned = models.load("unetpp-em"), models.load("unetpp-em", prune=1)
    assert ex.onnx_path(full) != ex.onnx_path(pruned)
    assert ex.onnx_path(pruned) == ex.onnx_path(models.load("unetpp-em", prune=1))


def test_a_search_keeps_only_the_chosen_program_and_none_of_its_measured_shapes(tmp_path, monkeypatch):
    """A first run must not hold every candidate's program (its peak would be the search's): after the search,
    only the chosen runtime's program is left, and none of the shapes it was compiled for while measured."""
    monkeypatch.setenv("TILESEG_CACHE_DIR", str(tmp_path / "cache"))
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=3, precision="bf16")
    request = tn.Request(core=None, default_core=32, batch=None, budget=2**30, searchable=True)
    made: list = []
    original = fw.prepare

    def tracked(net, runtime):
        fn = original(net, runtime)
        made.append((runtime, fn))
        return fn

    monkeypatch.setattr(tn, "prepare", tracked)
    choice = Tuner(None, seconds=2.0).choose(model, CPU, request)
    prepared = fw._PREPARED.get(model, {})
    assert len({r.label for r, _ in made}) >= 3, "the search measured several runtimes"
    assert set(prepared) <= {fw._key(choice.runtime)}, f"left behind: {sorted(prepared)}"
    assert all(not getattr(fn, "compiled", {}) for fn in prepared.values()), "measured shapes kept"
