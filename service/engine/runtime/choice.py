"""The records of the tuner's searches (:mod:`tileseg.engine.runtime.search`): a measured point, the choice a
run takes with the points it was chosen from, and the request that narrows a search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tileseg.engine.runtime.runtimes import Runtime
from tileseg.models.base import SegmentationNet


@dataclass
class Measurement:
    """One point: a runtime at a core and batch, its seconds per batch, setup seconds and peak bytes."""

    runtime: str
    core: int
    batch: int
    seconds: float | None = None  # per batch, steady state
    setup: float = 0.0  # seconds the first call took beyond a steady one (compiling, exporting)
    peak: int | None = None  # bytes the first call took beyond what the process held
    status: str = "measured"  # measured or failed
    error: str | None = None

    @property
    def rate(self) -> float:
        """Output (core) pixels a second; 0 when not measured."""
        return self.batch * self.core**2 / self.seconds if self.seconds else 0.0

    @property
    def point(self) -> tuple[str, int, int]:
        return (self.runtime, self.core, self.batch)


@dataclass
class Choice:
    """What a run takes (runtime, core, batch), why, and the measurements it was chosen from."""

    runtime: Runtime
    core: int
    batch: int
    reason: str
    window: int = 0
    rate: float | None = None  # measured output px/s
    peak: int | None = None  # measured bytes of the forward
    budget: int | None = None
    measurements: list[Measurement] = field(default_factory=list)
    searching: bool = False  # its window search was cut short by the bound: later runs go on with it
    measured: int = 0  # points the window search measured for it now (0: all known)

    def table(self) -> list[dict[str, Any]]:
        """One row a measured point: runtime, core, window, batch, Mpx/s, peak MB, status, chosen."""
        rows = []
        for m in sorted(self.measurements, key=lambda m: (m.runtime, m.core, m.batch)):
            over = self.budget is not None and m.peak is not None and m.peak > self.budget
            rows.append(
                {
                    "runtime": m.runtime,
                    "core": m.core,
                    "batch": m.batch,
                    "mpx_per_s": round(m.rate / 1e6, 3) if m.seconds else None,
                    "peak_mb": round(m.peak / 2**20) if m.peak is not None else None,
                    "setup_seconds": round(m.setup, 2),
                    "status": "over budget" if over and m.status == "measured" else m.status,
                    "error": m.error,
                    "chosen": m.point == (self.runtime.label, self.core, self.batch),
                }
            )
        return rows

    def summary(self) -> dict[str, Any]:
        """The choice as JSON: what the summary line, the job record and ``GET /models/{name}`` show."""
        return {
            "runtime": self.runtime.label,
            "numeric_path": self.runtime.label,  # what decides the values: kept whatever the tile and batch
            "tile": self.core,
            "window": self.window,
            "batch": self.batch,
            "mpx_per_s": round(self.rate / 1e6, 3) if self.rate else None,
            "peak_mb": round(self.peak / 2**20) if self.peak is not None else None,
            "why": self.reason,
            "searching": self.searching,
        }


@dataclass(frozen=True)
class Request:
    """What a run leaves to the tuner: the fixed choices narrow the search.

    Attributes:
        core: a fixed core (``--tile N``, or a model whose window must not change), or None to search.
        searchable: whether the model's window may change at all (an exact model: translation-equivariant, in
            crop mode, without a fixed window), whatever ``--tile`` says: the numeric path is chosen over every
            window such a model may run.
        thorough: measure every candidate on the screening window, every survivor at the start core and every
            runtime walked at its jump (a call of at most a third of the bound), whatever the bound (the numeric
            path's search: what it chooses is kept for good, so it sees every candidate).
        default_core: where the search starts (the card's default tile).
        batch: a fixed batch, or None to search.
        budget: bytes the forward may take.
        run_pixels: output pixels of the run (compilation pays only on long runs), or None (a benchmark).
        shape: the output's ``(height, width)`` (a core is priced evened out over it, as the run takes it), or None.
        row_bytes: what the run holds beside the forward for each output row of its band of tile rows, across
            the image's width (the stitched labels, validity and, if asked, probabilities): a core of ``c`` rows
            holds ``c * row_bytes``, so on a very wide image the budget bounds the core through it too.
    """

    core: int | None
    default_core: int
    batch: int | None
    budget: int
    run_pixels: int | None = None
    shape: tuple[int, int] | None = None
    row_bytes: int = 0
    searchable: bool = False
    thorough: bool = False
    precision: str = "auto"
    compile: str = "auto"
    runtime: str = "auto"
    measure_compile: bool = False


# (model, runtime, window, batch, seconds) -> (seconds per batch, setup seconds, peak bytes or None)
Timer = Callable[[SegmentationNet, Runtime, int, int, float], tuple[float, float, int | None]]


__all__ = ["Choice", "Measurement", "Request", "Timer"]
