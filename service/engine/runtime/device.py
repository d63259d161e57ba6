"""The device a network runs on: which one, what it can do, how many threads and how much memory it may take.

Used by the engine's tuner and by training alike. Nothing here measures speed (:mod:`tileseg.engine.runtime.tuner`
does); it answers what the machine is, so that every measurement can say which machine it was taken on.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

from tileseg.config import engine_config
from tileseg.engine.errors import OptionsError

# What the run may hold beside the process on a CPU, by default (the forward and the band of tile rows the image's
# width implies). The process holds about 0.4 GB (PyTorch and OpenVINO loaded) and the reads and writes in flight
# about 0.2 GB more, so a run stays under 1.5 GB of peak RSS on any image (first runs on an AVX2 EPYC, OpenVINO
# fp32: 1.28 GB at 16384², 1.31 GB on a 100,000-wide strip; 1.41 GB at 16384² with 1 GiB). 768 MiB held its
# windows there to about 1500, where its rate still grows to 2100 (unet-aerial: 1.30 Mpx/s at window 1216, 1.45
# at 1728, 1.48 at 2272).
CPU_BUDGET_CAP = 896 << 20
CPU_BUDGET_SHARE = 0.25  # of the memory available when the run starts
GPU_BUDGET_SHARE = 0.5  # of the GPU's free memory


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU.

    Raises:
        OptionsError: an unknown device, or CUDA asked for where there is none.
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise OptionsError("device cuda was asked for, but no CUDA device is available")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise OptionsError(f"unknown device {requested!r}; use auto, cpu or cuda") from None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (AVX-512-bf16 or AMX on a CPU; CUDA's own answer)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def bf16_kernels(device: torch.device) -> bool:
    """Whether PyTorch has bf16 kernels for ``device``: on a CPU, oneDNN's own answer (AVX-512 or better on
    x86-64). Without them (AVX2 only) eager bf16 is emulated: 1.1 and 10.3 s a 320² window of ``unet-aerial``
    (channels-last, contiguous) against 0.10 and 0.13 s in fp32, measured on a 2-core AMD EPYC."""
    if device.type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN's query: let the measurements decide
        return True


def describe_device(device: torch.device) -> dict[str, Any]:
    """Name, capability and threads of ``device``: the part of a measurement's key that is the machine."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(index),
            "capability": f"sm_{major}{minor}",
            "native_bf16": native_bf16(device),
        }
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {
        "type": "cpu",
        "name": name,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(device),
        "threads": torch.get_num_threads(),
    }


def configure_threads(threads: int | None = None) -> int:
    """Give the network every core this process may use (``threads``, else ``TILESEG_TORCH_THREADS``, else
    the CPUs in the process's affinity mask); returns the count. Reader and writer threads wait on GDAL
    with the GIL released and take little CPU beside it (measured in bench/runtime.py)."""
    if threads is None:
        threads = engine_config().torch_threads
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


# ---- memory ------------------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6, "mib": 1 << 20, "g": 1e9}
_UNITS.update({"gb": 1e9, "gib": 1 << 30, "t": 1e12, "tb": 1e12, "tib": 1 << 40})


def parse_bytes(text: str | int) -> int:
    """``"1.5GiB"``, ``"800MB"``, ``"2g"`` or a plain number of bytes -> bytes.

    Raises:
        OptionsError: anything else, with an example.
    """
    if isinstance(text, int):
        value, unit = float(text), ""
    else:
        found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
        if not found or found.group(2).lower() not in _UNITS:
            raise OptionsError(f"memory {text!r} is not a size: give bytes with a unit, e.g. 800MB or 1.5GiB")
        value, unit = float(found.group(1)), found.group(2).lower()
    size = int(value * _UNITS[unit])
    if size < 16 << 20:
        raise OptionsError(f"memory {text!r} is too small to run a network: give at least 16MB")
    return size


def available_memory() -> int | None:
    """Bytes the system can still give (``MemAvailable``), or None where it cannot tell."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def memory_budget(device: torch.device, requested: str | int | None = None) -> int:
    """The bytes a network's forward pass may take on ``device`` beyond what the process holds: ``requested``
    (``--memory``), else ``TILESEG_MEMORY_BUDGET``, else a fair share of what is free (a quarter of the
    memory available, at most :data:`CPU_BUDGET_CAP`, on a CPU; half the GPU's free memory on a GPU).

    Raises:
        OptionsError: a budget that is not a size.
    """
    configured = requested if requested is not None else engine_config().memory_budget or None
    if configured is not None:
        return parse_bytes(configured)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_BUDGET_SHARE)
    available = available_memory()
    return CPU_BUDGET_CAP if available is None else int(min(CPU_BUDGET_CAP, available * CPU_BUDGET_SHARE))


def _status_bytes(field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def resident(device: torch.device) -> int | None:
    """Bytes the process holds on ``device`` now: the resident set on a CPU (after handing the heap's free pages
    back), the allocator's on a GPU; None where the system cannot tell."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    from tileseg.engine.runtime.memory import release_free_memory

    release_free_memory()
    return _status_bytes("VmRSS")


_HIGH_BEFORE_RESETS = 0  # the resident set's high-water mark before PeakMemory last reset it


def process_peak() -> int | None:
    """The most resident memory the process has held (bytes), resets by :class:`PeakMemory` included: after a
    search, ``ru_maxrss`` and ``/usr/bin/time`` give only the peak since its last measurement (a first search
    for a 4096² run held 1.0 GB at its jump where ``/usr/bin/time`` then said 0.69 GB, on a 2-core EPYC); None
    where the system cannot tell."""
    high = _status_bytes("VmHWM")
    return None if high is None else max(high, _HIGH_BEFORE_RESETS)


class PeakMemory:
    """The most memory a block of code took beyond ``since`` (bytes held at an earlier point, from
    :func:`resident`; default: when the block begins): on a GPU the allocator's peak, on a CPU the resident
    set's high-water mark (reset through ``/proc/self/clear_refs``, the mark before kept for
    :func:`process_peak`). ``bytes`` is None where it cannot tell.

    Usage: ``with PeakMemory(device) as peak: ...; peak.bytes``.
    """

    def __init__(self, device: torch.device, since: int | None = None):
        self.device = device
        self.since = since
        self.bytes: int | None = None
        self._ok = False

    def __enter__(self) -> PeakMemory:
        now = resident(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._ok = True
        else:
            global _HIGH_BEFORE_RESETS
            _HIGH_BEFORE_RESETS = max(_HIGH_BEFORE_RESETS, _status_bytes("VmHWM") or 0)
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the present resident set
                self._ok = now is not None
            except OSError:
                self._ok = False
        if self.since is None:
            self.since = now
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._ok or self.since is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            high: int | None = torch.cuda.max_memory_allocated(self.device)
        else:
            high = _status_bytes("VmHWM")
        self.bytes = None if high is None else max(0, high - self.since)


__all__ = [
    "PeakMemory",
    "available_memory",
    "bf16_kernels",
    "configure_threads",
    "cpu_flags",
    "describe_device",
    "memory_budget",
    "native_bf16",
    "parse_bytes",
    "pick_device",
    "process_peak",
    "resident",
]
