"""How a network runs: its precision, memory format and runtime, and the forward function of each.

A :class:`Runtime` is one way to run a network: autocast precision (``fp32``, ``bf16``, ``fp16``), memory
format (``channels_last`` or contiguous) and mode: PyTorch ``eager``, ``compiled`` (``torch.compile``), or an
exported program run by ``onnxruntime`` (the CPU provider; CUDA's on a GPU), ``tensorrt`` (ONNX Runtime's
TensorRT provider) or ``openvino`` (:mod:`tileseg.engine.exported`). Which one is fastest is measured, per
machine, by :mod:`tileseg.engine.tuner`; this module only says what may be run and runs it.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tileseg.errors import OptionsError
from tileseg.models.base import SegmentationNet
from tileseg.models.spec import ModelSpec

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TORCH_MODES = ("eager", "compiled")
EXPORTED_MODES = ("onnxruntime", "tensorrt", "openvino")
# what --runtime accepts, and the modes each name allows
RUNTIME_CHOICES: dict[str, tuple[str, ...]] = {
    "auto": TORCH_MODES + EXPORTED_MODES,
    "torch": TORCH_MODES,
    "onnxruntime": ("onnxruntime", "tensorrt"),
    "openvino": ("openvino",),
}


@dataclass(frozen=True, order=True)
class Runtime:
    """One way to run a network: its autocast precision, memory format and mode."""

    precision: str = "fp32"
    channels_last: bool = True
    mode: str = "eager"

    @property
    def label(self) -> str:
        """``bf16/channels_last/eager``, ``fp32/contiguous/onnxruntime``: what tables, logs and tags show."""
        fmt = "channels_last" if self.channels_last else "contiguous"
        return f"{self.precision}/{fmt}/{self.mode}"

    @classmethod
    def from_label(cls, label: str) -> Runtime:
        precision, fmt, mode = label.split("/")
        return cls(precision, fmt == "channels_last", mode)

    @property
    def compiled(self) -> bool:
        return self.mode == "compiled"

    @property
    def exported(self) -> bool:
        """Run by another library from an exported program (its precision is that library's, not autocast)."""
        return self.mode in EXPORTED_MODES

    @property
    def dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def autocast(self, device: torch.device):
        """The autocast context of this precision on ``device`` (none for fp32 and for exported programs)."""
        if self.dtype is None or self.exported:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


BASELINE = Runtime("fp32", True, "eager")  # what every fallback runs: eager fp32, channels_last


def allowed_precisions(spec: ModelSpec, device: torch.device) -> list[str]:
    """The precisions the card allows that ``device`` runs: fp32 always; the card's reduced precision where the
    device has it (bf16 on CUDA only where ``torch.cuda.is_bf16_supported()``; fp16 on CUDA only)."""
    allowed = ["fp32"]
    reduced = spec.precision
    if reduced == "bf16" and (device.type != "cuda" or torch.cuda.is_bf16_supported()):
        allowed.append("bf16")
    if reduced == "fp16" and device.type == "cuda":
        allowed.append("fp16")
    return allowed


def compile_available(device: torch.device) -> bool:
    """Whether ``torch.compile`` can build kernels here (inductor needs a C++ compiler on the CPU)."""
    if not hasattr(torch, "compile"):
        return False
    return device.type == "cuda" or any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def exported_modes(device: torch.device) -> list[str]:
    """The exported runtimes installed for ``device``: ONNX Runtime (CPU provider, or CUDA's on a GPU),
    its TensorRT provider on a GPU where present, OpenVINO on a CPU where installed."""
    from tileseg.engine import exported

    modes = []
    providers = exported.onnxruntime_providers()
    if providers is not None and (device.type == "cpu" or "CUDAExecutionProvider" in providers):
        modes.append("onnxruntime")
    if device.type == "cuda" and providers is not None and "TensorrtExecutionProvider" in providers:
        modes.append("tensorrt")
    if device.type == "cpu" and exported.openvino_available():
        modes.append("openvino")
    return modes


def _exported_precisions(mode: str, precisions: list[str], device: torch.device) -> list[str]:
    """What each exported runtime computes in: ONNX Runtime fp32 (its CPU and CUDA kernels run the fp32 graph);
    TensorRT and OpenVINO the card's reduced precision too (a build flag, an inference hint)."""
    if mode == "onnxruntime":
        return [p for p in precisions if p == "fp32"]
    if mode == "openvino":
        return [p for p in precisions if p in ("fp32", "bf16")]
    return precisions


def candidates(
    spec: ModelSpec,
    device: torch.device,
    precision: str = "auto",
    compile: str = "auto",
    compilable: bool = True,
    runtime: str = "auto",
    exportable: bool = True,
) -> list[Runtime]:
    """The runtimes a run may choose from, given its fixed choices.

    ``compilable`` False (a TorchScript or ONNX network, ``SegmentationNet.compilable``): neither compiled,
    copied into another memory format, nor exported, so the one eager runtime of each precision is left.
    ``exportable`` False: no exported runtime (a network not loaded from a checkpoint, which has no key to
    cache its export under).

    Raises:
        OptionsError: a precision the card or the device does not allow, an unknown choice, or a fixed
            choice that leaves nothing (compile on for a TorchScript network, a runtime not installed).
    """
    allowed = allowed_precisions(spec, device)
    if precision == "auto":
        precisions = allowed
    elif precision not in PRECISIONS:
        raise OptionsError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    elif precision == "fp16" and device.type == "cpu":
        precisions = ["bf16"]  # the CPU's reduced precision; asked for by name, it is the user's call
    else:
        precisions = [precision]
    if compile not in ("auto", "on", "off"):
        raise OptionsError(f"unknown compile choice {compile!r}; use auto, on or off")
    if runtime not in RUNTIME_CHOICES:
        raise OptionsError(f"unknown runtime {runtime!r}; use {', '.join(RUNTIME_CHOICES)}")
    if not compilable:
        if compile == "on":
            raise OptionsError("compile on was asked for, but this model is a TorchScript or ONNX program")
        if runtime not in ("auto", "torch"):
            raise OptionsError(f"runtime {runtime} was asked for, but this model is a TorchScript or ONNX program")
        return [Runtime(p, True, "eager") for p in precisions]
    modes = [m for m in RUNTIME_CHOICES[runtime] if m != "compiled" or compile != "off"]
    if compile == "on":
        if runtime not in ("auto", "torch"):
            raise OptionsError("compile on applies to the torch runtime only")
        modes = ["compiled"]
    if "compiled" in modes and not compile_available(device):
        if compile == "on":
            raise OptionsError(
                "compile on was asked for, but torch.compile cannot build kernels here (no C++ compiler)"
            )
        modes.remove("compiled")
    installed = exported_modes(device) if exportable else []
    if runtime not in ("auto", "torch") and not any(m in installed for m in modes):
        why = "it is not installed" if exportable else "this network was not loaded from a checkpoint"
        raise OptionsError(f"runtime {runtime} was asked for, but {why} for {device.type}")
    found = []
    for mode in modes:
        if mode in TORCH_MODES:
            found += [Runtime(p, fmt, mode) for p in precisions for fmt in (True, False)]
        elif mode in installed:
            found += [Runtime(p, False, mode) for p in _exported_precisions(mode, precisions, device)]
    if not found:
        raise OptionsError(f"no runtime runs precision {precision} with runtime {runtime} on {device.type}")
    return found


# ---- preparing a network for a runtime --------------------------------------------------------------------

_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare(model: SegmentationNet, runtime: Runtime) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward function of ``model`` in ``runtime``, made once per model and runtime and kept while the
    model lives (a compiled network or an exported program is reused by every later run).

    The model itself stays as loaded (channels_last, eager) and is what that runtime runs; every other runtime
    runs a copy or a program, so that what is kept here never refers back to the model and goes when it goes.

    Raises:
        RuntimeError (and subclasses): the runtime cannot be made (an export that fails or differs from eager).
    """
    if runtime.channels_last and runtime.mode == "eager":
        return model
    per_model = _PREPARED.setdefault(model, {})
    key = (runtime.channels_last, runtime.mode, runtime.precision if runtime.exported else None)
    if key not in per_model:
        if runtime.exported:
            from tileseg.engine.exported import exported_forward

            per_model[key] = exported_forward(model, runtime)
        else:
            net = copy.deepcopy(model)
            if not runtime.channels_last:
                net = net.to(memory_format=torch.contiguous_format)
            per_model[key] = torch.compile(net, dynamic=False) if runtime.compiled else net
    return per_model[key]


def release(model: SegmentationNet, keep: Runtime) -> None:
    """Drop what was prepared for ``model`` except ``keep``'s (and compiled networks, whose compile was paid):
    after a search, the programs of the runtimes not chosen would hold their buffers for nothing."""
    per_model = _PREPARED.get(model, {})
    kept = (keep.channels_last, keep.mode, keep.precision if keep.exported else None)
    for key in [k for k in per_model if k != kept and k[1] != "compiled"]:
        del per_model[key]


def is_prepared(model: SegmentationNet, runtime: Runtime) -> bool:
    """Whether this process already holds ``model`` prepared for ``runtime`` (a compile paid)."""
    if runtime.channels_last and runtime.mode == "eager":
        return True
    key = (runtime.channels_last, runtime.mode, runtime.precision if runtime.exported else None)
    return key in _PREPARED.get(model, {})


def run_forward(model: SegmentationNet, runtime: Runtime, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``model(x)`` in ``runtime`` (``x`` already scaled, on the device)."""
    fn = prepare(model, runtime)
    x = x.contiguous(memory_format=torch.channels_last if runtime.channels_last else torch.contiguous_format)
    with runtime.autocast(device):
        return fn(x)


__all__ = [
    "BASELINE",
    "EXPORTED_MODES",
    "RUNTIME_CHOICES",
    "Runtime",
    "allowed_precisions",
    "candidates",
    "compile_available",
    "exported_modes",
    "is_prepared",
    "prepare",
    "release",
    "run_forward",
]
