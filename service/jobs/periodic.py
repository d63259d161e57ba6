"""A thread that does one step again and again, an interval apart, until it is stopped.

The jobs' background work is all of this shape: a running job's heartbeat, the reaper's passes, the
sweeper's sweeps and the embedded worker's looks at the queue. Each is a :class:`Periodic` whose
:meth:`~Periodic.step` says what one round does.
"""

from __future__ import annotations

import logging
import threading
from typing import TypeVar

log = logging.getLogger(__name__)

P = TypeVar("P", bound="Periodic")


class Periodic:
    """Runs :meth:`step` in a daemon thread every ``interval`` seconds until :meth:`stop`.

    A step that raises is logged and the next one comes after the interval as usual: what fails here is a
    database or a broker that is away for a moment. A step that returns True is followed by the next one
    at once (a worker that has just run a job looks for another without waiting).

    Args:
        name: the thread's name (it shows in logs and stack dumps).
        interval: seconds between the end of one step and the start of the next.
        at_start: take the first step at once instead of after one interval.
    """

    stop_wait: float = 10.0  # seconds :meth:`stop` waits for a step under way, by default

    def __init__(self, name: str, interval: float, at_start: bool = False):
        self.interval = interval
        self.at_start = at_start
        self._stopping = threading.Event()
        self._bell = threading.Event()  # rung by stop() and wake(): the wait between steps ends early
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def step(self) -> bool | None:
        """One round of the work; True asks for the next round at once. Subclasses say what it does."""
        raise NotImplementedError

    def start(self: P) -> P:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def wake(self) -> None:
        """Take the next step now rather than at the end of the interval."""
        self._bell.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Take no further step; wait up to ``timeout`` seconds (default :attr:`stop_wait`) for the one under
        way. Safe to call from a step itself (it then returns without waiting). Returns True when the
        thread has ended."""
        self._stopping.set()
        self._bell.set()
        return self.join(self.stop_wait if timeout is None else timeout)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the thread to end; returns True when it has."""
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        at_once = self.at_start
        while True:
            if not at_once:
                self._bell.wait(self.interval)
                self._bell.clear()
            if self._stopping.is_set():
                return
            try:
                at_once = bool(self.step())
            except Exception:  # the database or the broker is away: the next step tries again
                log.warning(
                    "%s: a step failed; the next comes in %g s", self._thread.name, self.interval, exc_info=True
                )
                at_once = False


__all__ = ["Periodic"]
