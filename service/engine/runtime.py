"""How a network runs on the device at hand: precision, memory format and compilation, chosen by measuring.

Nothing about speed holds from one machine to the next. On a CPU with native bf16 (AVX-512-bf16, AMX) bf16
autocast is 2-3x faster than fp32; on an AVX2 CPU oneDNN emulates it and it is 6.5x *slower*. ``channels_last``
is worth 1.1-1.6x on the CPUs measured here; ``torch.compile`` 1.2-1.9x, after 10-30 s of compiling. So a
run whose precision or compilation is ``auto`` measures the candidates the model card allows on the device,
once a machine, and keeps the fastest:

1. *Screen*: one small window through each eager candidate; a candidate more than :data:`SCREEN_FACTOR` times
   slower than the best is dropped there (an emulated bf16 costs a fraction of a second, not half a minute).
2. *Measure*: the survivors on one window of the model's default size (a batch costs about its size times
   as much), a warm-up call then timed calls within :data:`MEASURE_SECONDS`: a few seconds in all.
3. *Compile* only pays on long runs: compiled candidates are measured (compile time included) only when a run's
   estimated eager time is at least :data:`COMPILE_WORTH` times a typical compile, and chosen only when the time
   saved over the run exceeds the compile time still to pay (nothing once this process has compiled it).

Measurements are cached on disk (``TILESEG_CACHE_DIR``, default ``~/.cache/tileseg``) per checkpoint hash,
device and its capability, torch version, thread count, window and batch. A candidate that fails (a compile
error, an operator the precision lacks) is recorded as failed and never chosen; a chosen runtime that fails
during a run falls back to eager fp32 with one log line (:class:`tileseg.engine.runner.BatchRunner`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import platform
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tileseg.errors import OptionsError
from tileseg.models.base import SegmentationNet
from tileseg.models.spec import ModelSpec

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SCREEN_FACTOR = 1.5  # a candidate this much slower than the best on the small window is not measured further
MEASURE_SECONDS = 1.0  # timed calls per candidate stop after this long (at least one timed call)
COMPILE_WORTH = 3.0  # measure compilation only for runs whose eager time is this many typical compiles
TYPICAL_COMPILE_SECONDS = 20.0  # what compiling a zoo network took here (CPU, inductor): 9-23 s
NATIVE_BF16_MARGIN = 0.9  # without native bf16, bf16 must be at least 10 % faster than fp32 to be taken


@dataclass(frozen=True, order=True)
class Runtime:
    """One way to run a network: its autocast precision, memory format and whether it is compiled."""

    precision: str = "fp32"
    channels_last: bool = True
    compiled: bool = False

    @property
    def label(self) -> str:
        """``bf16/channels_last/eager`` and the like: what tables, logs and provenance tags show."""
        fmt = "channels_last" if self.channels_last else "contiguous"
        return f"{self.precision}/{fmt}/{'compiled' if self.compiled else 'eager'}"

    @classmethod
    def from_label(cls, label: str) -> Runtime:
        precision, fmt, mode = label.split("/")
        return cls(precision, fmt == "channels_last", mode == "compiled")

    @property
    def dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def autocast(self, device: torch.device):
        """The autocast context of this precision on ``device`` (none for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


BASELINE = Runtime("fp32", True, False)  # what every fallback runs: eager fp32, channels_last


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
    import shutil

    if not hasattr(torch, "compile"):
        return False
    return device.type == "cuda" or any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def candidates(
    spec: ModelSpec, device: torch.device, precision: str = "auto", compile: str = "auto", compilable: bool = True
) -> list[Runtime]:
    """The runtimes a run may choose from, given its fixed choices (``precision``, ``compile``).

    ``compilable`` False (a TorchScript or ONNX network, ``SegmentationNet.compilable``): neither compiled
    nor copied into another memory format, so the one eager runtime of each precision is left.

    Raises:
        OptionsError: a precision the card or the device does not allow, an unknown choice, or compile on
            for a network that cannot be compiled.
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
    modes = {"auto": [False, True], "on": [True], "off": [False]}[compile]
    if not compilable:
        if compile == "on":
            raise OptionsError("compile on was asked for, but this model is a TorchScript or ONNX program")
        return [Runtime(p, True, False) for p in precisions]
    if True in modes and not compile_available(device):
        if compile == "on":
            raise OptionsError(
                "compile on was asked for, but torch.compile cannot build kernels here (no C++ compiler)"
            )
        modes = [False]
    return [Runtime(p, fmt, c) for c in modes for p in precisions for fmt in (True, False)]


def configure_threads(threads: int | None = None) -> int:
    """Give the network every core this process may use (``threads``, else ``TILESEG_TORCH_THREADS``, else
    the CPUs in the process's affinity mask); returns the count. Reader and writer threads wait on GDAL
    with the GIL released and take little CPU beside it (measured in bench/runtime.py)."""
    if threads is None:
        configured = os.environ.get("TILESEG_TORCH_THREADS")
        threads = int(configured) if configured else None
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


# ---- preparing a network for a runtime --------------------------------------------------------------------

_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare(model: SegmentationNet, runtime: Runtime) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward function of ``model`` in ``runtime``'s memory format and compilation, made once per model
    and runtime and kept while the model lives (a compiled network is reused by every later run).

    The model itself stays as loaded (channels_last, eager) and is what that runtime runs; every other runtime
    runs a copy, so that what is kept here never refers back to the model and goes when the model goes.
    """
    if runtime.channels_last and not runtime.compiled:
        return model
    per_model = _PREPARED.setdefault(model, {})
    key = (runtime.channels_last, runtime.compiled)
    if key not in per_model:
        net = copy.deepcopy(model)
        if not runtime.channels_last:
            net = net.to(memory_format=torch.contiguous_format)
        per_model[key] = torch.compile(net, dynamic=False) if runtime.compiled else net
    return per_model[key]


def is_prepared(model: SegmentationNet, runtime: Runtime) -> bool:
    """Whether this process already holds ``model`` prepared for ``runtime`` (a compile paid)."""
    if runtime.channels_last and not runtime.compiled:
        return True
    return (runtime.channels_last, runtime.compiled) in _PREPARED.get(model, {})


def run_forward(model: SegmentationNet, runtime: Runtime, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``model(x)`` in ``runtime`` (``x`` already scaled, on the device)."""
    fn = prepare(model, runtime)
    x = x.contiguous(memory_format=torch.channels_last if runtime.channels_last else torch.contiguous_format)
    with runtime.autocast(device):
        return fn(x)


# ---- measuring ----------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """What one candidate cost: seconds per batch, seconds to set up (compiling), or why it was not measured."""

    runtime: str
    seconds: float | None = None  # per batch of the measured window, steady state
    setup: float = 0.0  # seconds the first call took beyond a steady one (compilation)
    screen: float | None = None  # seconds for the small screening window
    status: str = "measured"  # measured, screened out, failed, not measured
    error: str | None = None


@dataclass
class Choice:
    """The runtime a run takes and the measurements it was chosen from."""

    runtime: Runtime
    reason: str
    measurements: list[Measurement] = field(default_factory=list)
    window: int = 0
    batch: int = 0

    def table(self) -> list[dict[str, Any]]:
        """One row a candidate: runtime, Mpx/s of core pixels (None when not measured), status, chosen."""
        rows = []
        for m in self.measurements:
            rows.append(
                {
                    "runtime": m.runtime,
                    "seconds_per_batch": m.seconds,
                    "setup_seconds": round(m.setup, 2),
                    "screen_seconds": m.screen,
                    "status": m.status,
                    "error": m.error,
                    "chosen": m.runtime == self.runtime.label,
                }
            )
        return rows


# (model, runtime, window, batch, budget) -> (seconds per batch, setup seconds)
Timer = Callable[[SegmentationNet, Runtime, int, int, float], tuple[float, float]]


def time_forward(
    model: SegmentationNet, runtime: Runtime, window: int, batch: int, budget: float
) -> tuple[float, float]:
    """Seconds per forward pass of ``batch`` random windows in ``runtime`` (steady state), and the first call's
    extra seconds (compiling, allocating). Timed calls go on for ``budget`` seconds, at least one."""
    device = next(model.parameters()).device
    bands = model.spec.input.bands
    x = torch.randn(batch, bands, window, window, device=device)
    with torch.inference_mode():
        started = time.perf_counter()
        run_forward(model, runtime, x, device)
        _sync(device)
        first = time.perf_counter() - started
        calls, started = 0, time.perf_counter()
        while True:
            run_forward(model, runtime, x, device)
            _sync(device)
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= budget or (calls >= 2 and elapsed >= budget / 2):
                break
    steady = elapsed / calls
    return steady, max(0.0, first - steady)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MeasurementCache:
    """Measurements on disk, one JSON file, keyed by model, device, torch, threads, window and batch.

    A cache that cannot be read or written is left alone with one log line: measuring again is the worst case.
    """

    def __init__(self, path: Path | None = None):
        self.path = path or default_cache_path()

    def get(self, key: str) -> list[Measurement] | None:
        entry = self._read().get(key)
        if entry is None:
            return None
        try:
            return [Measurement(**m) for m in entry["measurements"]]
        except (KeyError, TypeError):
            return None

    def merge(self, key: str, measurements: list[Measurement]) -> list[Measurement]:
        """Add ``measurements`` to the entry of ``key``, keeping those already there; returns the entry."""
        kept = {m.runtime: m for m in (self.get(key) or [])}
        for m in measurements:
            kept.setdefault(m.runtime, m)
        merged = list(kept.values())
        self.put(key, merged)
        return merged

    def put(self, key: str, measurements: list[Measurement]) -> None:
        data = self._read()
        data[key] = {"measurements": [asdict(m) for m in measurements], "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path)
        except OSError as err:
            log.warning("runtime measurements not cached (%s): %s", self.path, err)
            tmp.unlink(missing_ok=True)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            log.warning("runtime measurement cache %s is unreadable, measuring again: %s", self.path, err)
            return {}


def default_cache_path() -> Path:
    """``$TILESEG_CACHE_DIR/runtime.json``, else ``$XDG_CACHE_HOME/tileseg`` or ``~/.cache/tileseg``."""
    configured = os.environ.get("TILESEG_CACHE_DIR")
    if configured:
        return Path(configured) / "runtime.json"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tileseg" / "runtime.json"


def model_key(model: SegmentationNet) -> str | None:
    """The checkpoint's hash, or None for a network that was not loaded from one (it is measured per process)."""
    path = getattr(model, "checkpoint_path", None)
    if path is None:
        return None
    from tileseg import models

    return models.card_hash(path)


class Tuner:
    """Measures candidates and chooses among them; one per process is enough (:func:`tuner`).

    Args:
        cache: where measurements persist; None keeps them in memory only.
        timer: how a candidate is timed (tests give a fake one).
    """

    def __init__(self, cache: MeasurementCache | None = None, timer: Timer = time_forward):
        self.cache = cache
        self.timer = timer
        self._memory: dict[str, list[Measurement]] = {}

    def choose(
        self,
        model: SegmentationNet,
        device: torch.device,
        window: int,
        batch: int,
        batches: int | None = None,
        precision: str = "auto",
        compile: str = "auto",
        window_pixels: int | None = None,
        measure_compile: bool = False,
    ) -> Choice:
        """The runtime for a run of ``batches`` batches of ``batch`` windows of ``window`` px.

        Fixed choices (``precision`` other than auto, ``compile`` on/off) narrow the candidates; with one
        left, nothing is measured. ``window_pixels`` scales the estimate when the run's window differs from
        the measured one. ``measure_compile`` measures compilation whatever the run's length (a benchmark).
        """
        options = candidates(model.spec, device, precision, compile, getattr(model, "compilable", True))
        if len(options) == 1 or (precision != "auto" and compile != "auto"):
            runtime = options[0] if len(options) == 1 else replace(options[0], channels_last=True)
            return Choice(runtime, "as asked", window=window, batch=batch)
        measured = self._measurements(
            model, device, window, batch, options, batches, compile if not measure_compile else "on"
        )
        chosen, reason = self._pick(
            model, device, measured, options, batches, window, window_pixels, fresh=measure_compile
        )
        return Choice(chosen, reason, measured, window, batch)

    def _key(self, model: SegmentationNet, device: torch.device, window: int, batch: int) -> str:
        checkpoint = model_key(model) or f"process:{id(model):x}"
        machine = describe_device(device)
        return json.dumps(
            {
                "model": checkpoint,
                "device": machine,
                "torch": torch.__version__,
                "window": window,
                "batch": batch,
                "options": model.spec.options,
            },
            sort_keys=True,
        )

    def _load(self, key: str, persistent: bool) -> list[Measurement]:
        # the disk first: every process on the machine then takes the same runtime for the same run
        found = self.cache.get(key) if (self.cache and persistent) else None
        return found or self._memory.get(key, [])

    def _store(self, key: str, measured: list[Measurement], persistent: bool) -> list[Measurement]:
        """Keep new measurements; where another process measured the same candidate first, its figure wins
        (so that two processes measuring at once end up with one choice). Returns what is kept."""
        if self.cache and persistent:
            measured = self.cache.merge(key, measured)
        self._memory[key] = measured
        return measured

    def _measurements(self, model, device, window, batch, options, batches, compile) -> list[Measurement]:
        key = self._key(model, device, window, batch)
        persistent = model_key(model) is not None
        measured = {m.runtime: m for m in self._load(key, persistent)}
        changed = False
        eager = [r for r in options if not r.compiled]
        if any(r.label not in measured for r in eager):
            for m in self._measure_eager(model, device, window, batch, eager):
                measured[m.runtime] = m
            changed = True
        best_eager = _best(measured.values(), eager)
        compiled = [r for r in options if r.compiled]
        if compiled and best_eager is not None:
            worth = (
                compile == "on"
                or batches is None
                or measured[best_eager.label].seconds * batches >= COMPILE_WORTH * TYPICAL_COMPILE_SECONDS
            )
            # compile the precision and format eager found best: compiling every candidate costs minutes
            target = replace(best_eager, compiled=True)
            if worth and target in compiled and target.label not in measured:
                measured[target.label] = self._measure_one(model, device, target, window, batch)
                changed = True
        if changed:
            kept = self._store(key, [m for m in measured.values() if m.status != "not measured"], persistent)
            measured = {m.runtime: m for m in kept}
        return [
            measured[r.label] if r.label in measured else Measurement(r.label, status="not measured") for r in options
        ]

    def _measure_eager(self, model, device, window, batch, eager: list[Runtime]) -> list[Measurement]:
        small = _screen_window(model, window)
        results = []
        for runtime in eager:
            try:
                seconds, _ = self.timer(model, runtime, small, 1, 0.2)
                results.append(Measurement(runtime.label, screen=seconds))
            except Exception as err:  # an operator the precision lacks, and the like: never chosen
                log.info("runtime %s failed on %s: %s", runtime.label, model.spec.name, err)
                results.append(Measurement(runtime.label, status="failed", error=f"{type(err).__name__}: {err}"))
        screened = [m.screen for m in results if m.screen is not None]
        fastest = min(screened) if screened else 0.0
        for m in results:
            if m.screen is None:
                continue
            if m.screen > SCREEN_FACTOR * fastest:
                m.status = "screened out"
                continue
            # one window, not a batch: an eager pass costs about batch times as much, and a 1136-px window of
            # an FCN at 4 a batch took 200 s to measure on a busy machine
            full = self._measure_one(model, device, Runtime.from_label(m.runtime), window, 1)
            m.seconds = full.seconds * batch if full.seconds is not None else None
            m.setup, m.status, m.error = full.setup, full.status, full.error
        return results

    def _measure_one(self, model, device, runtime: Runtime, window: int, batch: int) -> Measurement:
        try:
            seconds, setup = self.timer(model, runtime, window, batch, MEASURE_SECONDS)
            return Measurement(runtime.label, seconds=seconds, setup=setup)
        except Exception as err:
            log.info("runtime %s failed on %s: %s", runtime.label, model.spec.name, err)
            return Measurement(runtime.label, status="failed", error=f"{type(err).__name__}: {err}")

    def _pick(
        self, model, device, measured, options, batches, window, window_pixels, fresh: bool = False
    ) -> tuple[Runtime, str]:
        """The cheapest candidate over the whole run; ``fresh``: as for a new process (compiles not yet paid)."""
        by_label = {m.runtime: m for m in measured}
        native = native_bf16(device)
        scale = (window_pixels / window**2) if window_pixels else 1.0
        fp32 = min(
            (
                by_label[r.label].seconds
                for r in options
                if r.precision == "fp32" and not r.compiled and by_label[r.label].seconds
            ),
            default=None,
        )

        def cost(runtime: Runtime) -> float:
            m = by_label[runtime.label]
            per_batch = m.seconds * scale
            if (
                runtime.precision == "bf16"
                and not native
                and fp32 is not None
                and m.seconds > NATIVE_BF16_MARGIN * fp32
            ):
                return math.inf  # emulated bf16 must clearly beat fp32 to be worth its rounding
            paid = not runtime.compiled or (not fresh and is_prepared(model, runtime))
            setup = 0.0 if paid else m.setup
            return per_batch * (batches if batches is not None else 1) + setup

        usable = [r for r in options if by_label[r.label].seconds is not None]
        if not usable:
            return BASELINE, "no candidate could be measured: eager fp32"
        best = min(usable, key=cost)
        if cost(best) == math.inf:
            best = min(usable, key=lambda r: (r.precision != "fp32", by_label[r.label].seconds))
        return best, f"measured fastest of {len(usable)}"


def _best(measured, eager: list[Runtime]) -> Runtime | None:
    by_label = {m.runtime: m for m in measured}
    timed = [r for r in eager if r.label in by_label and by_label[r.label].seconds is not None]
    return min(timed, key=lambda r: by_label[r.label].seconds) if timed else None


def _screen_window(model: SegmentationNet, window: int) -> int:
    """A small window the network accepts (about 128 px of core): cheap enough for an emulated precision."""
    geometry = model.spec.geometry
    core = max(geometry.multiple, min(128, window) // geometry.multiple * geometry.multiple)
    return min(window, geometry.window(core))


_TUNER: Tuner | None = None


def tuner() -> Tuner:
    """The process's tuner, caching on disk at :func:`default_cache_path`."""
    global _TUNER
    if _TUNER is None or (_TUNER.cache and _TUNER.cache.path != default_cache_path()):
        _TUNER = Tuner(MeasurementCache())
    return _TUNER


__all__ = [
    "BASELINE",
    "Choice",
    "Measurement",
    "MeasurementCache",
    "Runtime",
    "Tuner",
    "allowed_precisions",
    "candidates",
    "configure_threads",
    "describe_device",
    "native_bf16",
    "pick_device",
    "prepare",
    "run_forward",
    "tuner",
]
