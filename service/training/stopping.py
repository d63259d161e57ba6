"""Stopping a session cleanly: on SIGINT or SIGTERM, at a time budget, or after a number of steps; under
torchrun, every process at the same step."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

import torch

# Stop reasons from the weakest to the strongest; "done" means "do not stop".
REASONS = ("done", "session steps", "time budget", "signal SIGTERM", "signal SIGINT")


class StopSignals:
    """Turns the first SIGINT or SIGTERM into a request to stop after the current step (the state is then
    saved); a second one acts as usual."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        with contextlib.suppress(ValueError):  # signal handlers can only be set from the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def stop_reason(
    signals: StopSignals, time_budget: float | None, session_steps: int | None, steps_done: int, seconds: float
) -> str:
    """Why this session should stop before its next step, or ``"done"`` when it should go on.

    Args:
        signals: the signals received so far.
        time_budget: minutes the session may run, or None.
        session_steps: steps the session may take, or None.
        steps_done, seconds: the session's steps and wall seconds so far.
    """
    if signals.received is not None:
        return f"signal {signal.Signals(signals.received).name}"
    if time_budget is not None and seconds >= time_budget * 60:
        return "time budget"
    if session_steps is not None and steps_done >= session_steps:
        return "session steps"
    return "done"


def agree_on_stop(reason: str, device: torch.device) -> str:
    """All processes stop at the same step: the strongest reason any of them has wins."""
    import torch.distributed as dist

    code = torch.tensor([REASONS.index(reason) if reason in REASONS else len(REASONS) - 1], device=device)
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    return REASONS[int(code.item())]
