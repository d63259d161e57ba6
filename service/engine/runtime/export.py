"""Exported runtimes: a checkpoint's network exported once to ONNX and run by ONNX Runtime or OpenVINO.

On some machines another library runs the same network faster than PyTorch's eager kernels (ONNX Runtime was
1.3-1.6x faster than eager fp32 on an AVX2 EPYC here; see the README). The export is made once per checkpoint,
library versions and opset, into ``$TILESEG_CACHE_DIR/exports/`` (written to a temporary name, then renamed,
so two processes never read a half-written file), with dynamic batch, height and width, so that one file
serves every window the tuner tries.

An exported program is used only after it has shown, on two probe windows, the logits of eager fp32: within
:data:`LOGIT_TOLERANCE`, or the same mask wherever the top two classes are more than :data:`MARGIN` apart
(:func:`check_against_eager`). A program that differs raises :class:`ExportMismatch` and is never chosen. A
check passed is recorded beside the file (``NAME.checked.json``, per runtime, library version and device
type), so later processes do not pay for it again.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
import uuid
import warnings
import weakref
from collections import OrderedDict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tileseg.config import engine_config
from tileseg.engine.runtime.labels import onnx_labels, openvino_labels
from tileseg.engine.runtime.quantized import model_int8_path
from tileseg.engine.runtime.runtimes import Runtime
from tileseg.models.base import SegmentationNet

log = logging.getLogger(__name__)

OPSET = 17
LOGIT_TOLERANCE = 1e-4  # absolute, on logits scaled to at most 1 in magnitude
MARGIN = 1e-3  # where the top two logits are closer than this, either class is a fair answer
OPENVINO_SHAPES_KEPT = 2  # compiled shapes an OpenVINO program keeps (each holds its own buffers)


class ExportMismatch(RuntimeError):
    """An exported program whose logits differ from eager fp32's on a probe window."""


def cache_dir() -> Path:
    """``$TILESEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/tileseg`` or ``~/.cache/tileseg``."""
    configured = engine_config().cache_dir
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tileseg"


# the distributions that may provide each library (the CUDA images install onnxruntime-gpu)
_DISTRIBUTIONS = {"onnx": ("onnx",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "openvino": ("openvino",)}


def library_versions() -> dict[str, str]:
    """The versions an export and its runtimes depend on: part of every cache key. Read from the installed
    distributions' metadata, not by importing them (importing onnx alone took 0.8 s of a run's first call)."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    versions = [("torch", torch.__version__), ("opset", str(OPSET))]
    for name, distributions in _DISTRIBUTIONS.items():
        for distribution in distributions:
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions.append((name, metadata.version(distribution)))
                break
    return tuple(versions)


def onnx_path(model: SegmentationNet) -> Path:
    """The cached ONNX file of ``model``'s checkpoint (made by :func:`export_onnx` when missing).

    Raises:
        RuntimeError: a network that was not loaded from a checkpoint (nothing to key its export by).
    """
    from tileseg import models

    checkpoint = getattr(model, "checkpoint_path", None)
    if checkpoint is None:
        raise RuntimeError("only a network loaded from a checkpoint is exported (its hash keys the file)")
    versions = library_versions()
    tag = f"torch{versions['torch']}-onnx{versions.get('onnx', '0')}-opset{OPSET}".replace("+", "_")
    # serving options change the network (a pruned U-Net++ is another graph from the same checkpoint)
    if model.spec.options:
        options = json.dumps(model.spec.options, sort_keys=True, default=str).encode()
        tag += "-" + hashlib.sha256(options).hexdigest()[:12]
    return cache_dir() / "exports" / f"{models.card_hash(checkpoint)[:24]}-{tag}.onnx"


def export_onnx(model: SegmentationNet, path: Path) -> Path:
    """Export ``model`` (fp32, contiguous) to ONNX at ``path`` with dynamic batch, height and width."""
    window = probe_windows(model)[0]  # any window it takes: the smallest traces fastest (0.3 s, not 1.2 s)
    net = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).cpu().eval()
    x = torch.randn(1, model.spec.input.bands, window, window)
    axes = {0: "batch", 2: "height", 3: "width"}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (x,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": axes, "logits": axes},
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s to %s", model.spec.name, path)
    return path


class OnnxRuntimeForward:
    """An ONNX file run by ONNX Runtime on CPU (or CUDA, or TensorRT), called like a network: fp32 tensors
    in and out. Its CPU memory arena is off, so a large window's buffers go back once it has run (memory
    stays flat whatever windows were measured before)."""

    def __init__(self, path: Path, device: torch.device, runtime: Runtime):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            if runtime.mode == "tensorrt":
                trt = {"device_id": device.index or 0, "trt_fp16_enable": runtime.precision == "fp16"}
                trt["trt_engine_cache_enable"] = True
                trt["trt_engine_cache_path"] = str(cache_dir() / "tensorrt")
                providers.insert(0, ("TensorrtExecutionProvider", trt))
        self.device = device
        self.path, self.options, self.providers = path, options, providers
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.sessions: dict[tuple[str, str], Any] = {}  # (raw, labels) -> the session of that labels program

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run(None, {"input": array})[0]
        return torch.from_numpy(out).to(self.device)

    def labels(self, raw: np.ndarray, a: np.ndarray, b: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """As :meth:`OpenVinoForward.labels`: the scaling and the winning channel inside the program (its
        ``ArgMax`` takes the first largest channel), from a copy of the ONNX file made once beside it."""
        import onnxruntime as ort

        raw = np.ascontiguousarray(raw if raw.dtype == np.uint8 else raw.astype(np.float32, copy=False))
        key = ("u8" if raw.dtype == np.uint8 else "f32", np.dtype(dtype).name)
        if key not in self.sessions:
            program = onnx_labels(self.path, *key)
            self.sessions[key] = ort.InferenceSession(str(program), self.options, providers=self.providers)
        factors = [np.asarray(f, np.float32).reshape(1, -1, 1, 1) for f in (a, b)]
        return self.sessions[key].run(None, {"raw": raw, "a": factors[0], "b": factors[1]})[0]


class OpenVinoForward:
    """An ONNX file compiled by OpenVINO for the CPU, once per input shape (the last few kept), in fp32 or,
    where the card allows it, bf16 (OpenVINO's inference precision hint); an int8 (QDQ) program runs its
    quantized layers in int8 and the rest in fp32.

    Called like a network (scaled float32 in, logits out), or through :meth:`labels`: raw band values in,
    scaled and reduced to the winning channel inside the program, so that one byte a pixel comes in and one
    goes out (the host's scaling and argmax over float logits were a tenth of an 8192² run)."""

    def __init__(self, path: Path, runtime: Runtime):
        import openvino

        self.core = openvino.Core()
        self.path = path
        self.config = {
            "INFERENCE_PRECISION_HINT": "bf16" if runtime.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled: OrderedDict[tuple, Any] = OrderedDict()

    def clear(self) -> None:
        """Drop every compiled shape (the tuner measures each size's cost from nothing)."""
        self.compiled.clear()

    def _compiled(self, shape: tuple[int, ...], labels: str | None = None, raw: str = "f32") -> Any:
        key = (shape, labels, raw)
        if key in self.compiled:
            self.compiled.move_to_end(key)
            return self.compiled[key]
        while len(self.compiled) >= OPENVINO_SHAPES_KEPT:
            self.compiled.popitem(last=False)
        network = self.core.read_model(str(self.path))
        network.reshape({"input": list(shape)})
        if labels is not None:
            network = openvino_labels(network, shape, raw, labels)
        self.compiled[key] = self.core.compile_model(network, "CPU", self.config)
        return self.compiled[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        compiled = self._compiled(tuple(array.shape))
        out = compiled(array)[compiled.output(0)]
        return torch.from_numpy(np.asarray(out)).to(x.device)

    def labels(self, raw: np.ndarray, a: np.ndarray, b: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """The winning channel ``(B, H, W)`` (``dtype``: uint8 or int16) of every output pixel of the raw windows
        ``raw`` (``(B, bands, h, w)``, uint8 or float32, clipped already), scaled by ``raw * a + b`` (``a``, ``b``:
        ``(bands,)`` float32) inside the program. The first channel wins ties, as in
        :func:`tileseg.engine.batches.winning_class`."""
        raw = np.ascontiguousarray(raw)
        kind = "u8" if raw.dtype == np.uint8 else "f32"
        compiled = self._compiled(tuple(raw.shape), np.dtype(dtype).name, kind)
        factors = [np.asarray(f, np.float32).reshape(1, -1, 1, 1) for f in (a, b)]
        out = compiled({"raw": raw if kind == "u8" else raw.astype(np.float32, copy=False), "a": factors[0],
                        "b": factors[1]})[compiled.output(0)]  # fmt: skip
        return np.asarray(out)


def exported_forward(model: SegmentationNet, runtime: Runtime):
    """The forward function of ``model`` in an exported ``runtime``: the cached ONNX file (exported when
    missing) in its library, checked against eager fp32 first; for int8, that file quantized with the card's
    ranges (:mod:`.quantized`), whose agreement with fp32 is the card's to record.

    Raises:
        ExportMismatch: the program's logits differ from eager fp32's.
        RuntimeError and others: the export or the library failed (the tuner records it; never chosen).
    """
    device = next(model.parameters()).device
    path = onnx_path(model)
    if not path.is_file():
        export_onnx(model, path)
    # int8: the export quantized with the card's ranges; the check below is of the export's own fp32 graph
    program = model_int8_path(model, path) if runtime.precision == "int8" else path
    if runtime.mode == "openvino":
        forward: Any = OpenVinoForward(program, runtime)
    else:
        forward = OnnxRuntimeForward(program, device, runtime)
    checked = path.with_suffix(".checked.json")
    kind = f"{runtime.mode}:{device.type}:{library_versions().get(_LIBRARY[runtime.mode], '?')}"
    if kind not in _read_json(checked):  # checked once per program, library and device type; then on record
        check: Any
        if runtime.mode == "openvino":
            check = OpenVinoForward(path, Runtime("fp32", False, "openvino"))  # the graph itself, in fp32
        else:
            fp32 = Runtime("fp32", False, "onnxruntime")
            check = forward if runtime.precision == "fp32" else OnnxRuntimeForward(path, device, fp32)
        why = check_against_eager(model, check, device)
        _write_json(checked, {**_read_json(checked), kind: why})
    return forward


_LIBRARY = {"onnxruntime": "onnxruntime", "tensorrt": "onnxruntime", "openvino": "openvino"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as err:
        log.warning("export check not recorded (%s): %s", path, err)
        tmp.unlink(missing_ok=True)


def probe_windows(model: SegmentationNet) -> list[int]:
    """The windows an export is checked on: those of a half and a quarter of the default core, where the model
    takes any window (two shapes of the dynamic axes; small, since eager and each checked program run both on a
    first run: the default window and its half took about 2 s of them on an AVX2 EPYC); else its fixed window."""
    geometry = model.spec.geometry
    if geometry.fixed_window is not None:
        return [geometry.fixed_window]
    multiple = geometry.multiple
    cores = {max(multiple, geometry.default_tile // k // multiple * multiple) for k in (2, 4)}
    return sorted(geometry.window(core) for core in cores)


# the probe windows and eager fp32's logits on them, per network: computed once for every runtime checked (a
# first run checks two, and eager took 0.6 s of each check on an AVX2 EPYC)
_REFERENCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _eager_references(model: SegmentationNet, device: torch.device) -> list[tuple[torch.Tensor, np.ndarray]]:
    key = (str(device), tuple(probe_windows(model)))
    found = _REFERENCES.get(model)
    if found is None or found[0] != key:
        generator, pairs = torch.Generator().manual_seed(0), []
        for window in key[1]:
            x = torch.randn(1, model.spec.input.bands, window, window, generator=generator).to(device)
            with torch.inference_mode():
                pairs.append((x, model(x.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()))
        found = _REFERENCES[model] = (key, pairs)
    return found[1]


def logits_agree(reference: np.ndarray, other: np.ndarray) -> tuple[bool, str]:
    """Whether ``other`` gives ``reference``'s logits (``(B, K, H, W)``): within :data:`LOGIT_TOLERANCE` of
    the logits' scale, or the same winning class wherever the top two are more than :data:`MARGIN` apart."""
    if reference.shape != other.shape:
        return False, f"output shape {other.shape} is not eager's {reference.shape}"
    scale = max(1.0, float(np.abs(reference).max()))
    diff = float(np.abs(reference - other).max()) / scale
    if diff <= LOGIT_TOLERANCE:
        return True, f"logits within {diff:.1e}"
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > MARGIN * scale
    same = reference.argmax(axis=1) == other.argmax(axis=1)
    disagree = int((clear & ~same).sum())
    if disagree == 0:
        return True, f"logits differ by {diff:.1e}, masks equal where the top-2 margin is clear"
    return False, f"logits differ by {diff:.1e} and {disagree} clear-cut pixels change class"


def check_against_eager(model: SegmentationNet, forward, device: torch.device) -> str:
    """Run ``forward`` and eager fp32 on random probe windows; raise :class:`ExportMismatch` where they differ.
    Returns how close they were, in words."""
    found = []
    for x, reference in _eager_references(model, device):
        with torch.inference_mode():
            other = forward(x).float().cpu().numpy()
        ok, why = logits_agree(reference, other)
        window = x.shape[-1]
        if not ok:
            raise ExportMismatch(f"the exported {model.spec.name} differs from eager fp32 at {window} px: {why}")
        found.append(f"{window} px: {why}")
    return "; ".join(found)


__all__ = [
    "ExportMismatch",
    "cache_dir",
    "check_against_eager",
    "export_onnx",
    "exported_forward",
    "library_versions",
    "logits_agree",
]
