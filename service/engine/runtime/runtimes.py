"""How a network runs: its precision, memory format and runtime, and the forward function of each.

A :class:`Runtime` is one way to run a network: autocast precision (``fp32``, ``bf16``, ``fp16``; ``int8``,
an exported program quantized statically, :mod:`tileseg.engine.runtime.quantized`), memory
format (``channels_last`` or contiguous) and mode: PyTorch ``eager``, ``compiled`` (``torch.compile``), or an
exported program run by ``onnxruntime`` (the CPU provider; CUDA's on a GPU), ``tensorrt`` (ONNX Runtime's
TensorRT provider) or ``openvino`` (:mod:`tileseg.engine.runtime.export`). Which one is fastest is measured, per
machine, by :mod:`tileseg.engine.runtime.tuner`; this module only says what may be run and runs it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
from dataclasses import dataclass
from functools import cache

import torch

from tileseg.engine.errors import OptionsError
from tileseg.engine.runtime.device import bf16_kernels, native_bf16
from tileseg.models.spec import ModelSpec

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "int8": None,  # no autocast: an int8 program is run by an exported runtime only
}
EXPORTED_ONLY = ("int8",)
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
    device has it (bf16 on CUDA only where ``torch.cuda.is_bf16_supported()``; fp16 on CUDA only); int8 on the
    CPU where the card allows it (``tileseg models quantize`` found its masks agree with fp32 at least as well
    as bf16's do)."""
    allowed = ["fp32"]
    reduced = spec.precision
    if reduced == "bf16" and (device.type != "cuda" or torch.cuda.is_bf16_supported()):
        allowed.append("bf16")
    if reduced == "fp16" and device.type == "cuda":
        allowed.append("fp16")
    if spec.int8 and device.type == "cpu":
        allowed.append("int8")
    return allowed


def compile_available(device: torch.device) -> bool:
    """Whether ``torch.compile`` can build kernels here (inductor needs a C++ compiler on the CPU)."""
    if not hasattr(torch, "compile"):
        return False
    return device.type == "cuda" or any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def installed(*names: str) -> bool:
    """Whether every module of ``names`` is installed, found without importing it (importing onnx alone took
    0.8 s of every process's first run, for a module only an export needs)."""
    return all(importlib.util.find_spec(name) is not None for name in names)


@cache
def onnxruntime_providers() -> tuple[str, ...] | None:
    """ONNX Runtime's execution providers here, or None when it (or onnx, for exporting) is not installed."""
    if not installed("onnx", "onnxruntime"):
        return None
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


@cache
def openvino_available() -> bool:
    return installed("onnx", "openvino")


def exported_modes(device: torch.device) -> list[str]:
    """The exported runtimes installed for ``device``: ONNX Runtime (CPU provider, or CUDA's on a GPU),
    its TensorRT provider on a GPU where present, OpenVINO on a CPU where installed."""
    modes = []
    if device.type == "cpu":  # its CPU provider is always there: not imported for the asking
        if installed("onnx", "onnxruntime"):
            modes.append("onnxruntime")
    elif (providers := onnxruntime_providers()) is not None:
        if "CUDAExecutionProvider" in providers:
            modes.append("onnxruntime")
        if "TensorrtExecutionProvider" in providers:
            modes.append("tensorrt")
    if device.type == "cpu" and openvino_available():
        modes.append("openvino")
    return modes


def _exported_precisions(mode: str, precisions: list[str], device: torch.device, asked: str) -> list[str]:
    """What each exported runtime computes in: ONNX Runtime fp32 (its CPU and CUDA kernels run the fp32 graph)
    and, on the CPU, the int8 program; OpenVINO fp32, bf16 (an inference hint: on a CPU without bf16 in hardware
    it computes in fp32, so it is a candidate there only when ``asked`` for) and the int8 program; TensorRT
    the card's reduced float precision too (a build flag)."""
    if mode == "onnxruntime":
        return [p for p in precisions if p == "fp32" or (p == "int8" and device.type == "cpu")]
    if mode == "openvino":
        bf16 = asked == "bf16" or native_bf16(device)
        return [p for p in precisions if p in ("fp32", "int8") or (p == "bf16" and bf16)]
    return [p for p in precisions if p not in EXPORTED_ONLY]


def _int8_asked(spec: ModelSpec, device: torch.device, exportable: bool) -> list[str]:
    """``--precision int8``: refused unless the card allows it and an exported runtime can run it here."""
    if not spec.int8:
        raise OptionsError(
            f"int8 was asked for, but the card of {spec.name} does not allow it: its int8 masks were not shown to "
            "agree with fp32 at least as well as bf16's do (`tileseg models quantize` measures it); use fp32 or bf16"
        )
    if device.type != "cpu":
        raise OptionsError(f"int8 was asked for, but it runs on the CPU only, not on {device.type}")
    if not exportable:
        raise OptionsError("int8 was asked for, but this network is not an exported checkpoint (no int8 program)")
    return ["int8"]


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
        raise OptionsError(f"unknown precision {precision!r}; use auto, fp32, bf16, fp16 or int8")
    elif precision == "int8":
        precisions = _int8_asked(spec, device, compilable and exportable)
    elif precision == "fp16" and device.type == "cpu":
        precisions = ["bf16"]  # the CPU's reduced precision; asked for by name, it is the user's call
    else:
        precisions = [precision]
    if compile not in ("auto", "on", "off"):
        raise OptionsError(f"unknown compile choice {compile!r}; use auto, on or off")
    if runtime not in RUNTIME_CHOICES:
        raise OptionsError(f"unknown runtime {runtime!r}; use {', '.join(RUNTIME_CHOICES)}")
    # torch's own bf16 where it has no kernels for it is an order of magnitude slower than fp32: not tried
    # (measuring it was most of a first run), unless asked for by name
    eager = [
        p for p in precisions if p not in EXPORTED_ONLY and (p != "bf16" or precision != "auto" or bf16_kernels(device))
    ]
    if not compilable:
        if compile == "on":
            raise OptionsError("compile on was asked for, but this model is a TorchScript or ONNX program")
        if runtime not in ("auto", "torch"):
            raise OptionsError(f"runtime {runtime} was asked for, but this model is a TorchScript or ONNX program")
        return [Runtime(p, True, "eager") for p in eager]
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
            found += [Runtime(p, fmt, mode) for p in eager for fmt in (True, False)]
        elif mode in installed:
            found += [Runtime(p, False, mode) for p in _exported_precisions(mode, precisions, device, precision)]
    if not found and precision == "int8":
        raise OptionsError("int8 runs in ONNX Runtime or OpenVINO: install one, and leave --runtime auto or name it")
    if not found:
        raise OptionsError(f"no runtime runs precision {precision} with runtime {runtime} on {device.type}")
    return found


__all__ = [
    "BASELINE",
    "EXPORTED_MODES",
    "EXPORTED_ONLY",
    "RUNTIME_CHOICES",
    "Runtime",
    "allowed_precisions",
    "candidates",
    "compile_available",
    "exported_modes",
    "onnxruntime_providers",
    "openvino_available",
]
