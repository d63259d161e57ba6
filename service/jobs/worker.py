"""The embedded worker: a thread per device that claims queued jobs and runs them, one at a time.

``wake()`` tells it a job was queued (it also looks every ``poll`` seconds, so jobs queued by another
process are found too). ``stop(grace)`` stops it taking jobs and lets the running one finish for ``grace``
seconds; past that the job is interrupted at its next batch and goes back to the queue.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from tileseg.jobs.runner import ModelSource, Outcome, RunConfig, run_job
from tileseg.jobs.store import JobStore

log = logging.getLogger(__name__)


class Worker:
    """Runs queued jobs in a thread.

    Args:
        store: the job table.
        load_model: ``(name, prune) -> network`` on this worker's device.
        config: how to run jobs.
        name: the worker's name in the job table.
        on_outcome: called after each job (metrics).
        poll: seconds between looks at the queue when nobody calls :meth:`wake`.
    """

    def __init__(self, store: JobStore, load_model: ModelSource, config: RunConfig, name: str | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None, poll: float = 1.0):
        self.store = store
        self.load_model = load_model
        self.config = config
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.on_outcome = on_outcome
        self.poll = poll
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._interrupt = threading.Event()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"tileseg-worker-{self.name}", daemon=True)

    def start(self) -> Worker:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def wake(self) -> None:
        """A job was queued: look now."""
        self._wake.set()

    def stop(self, grace: float) -> bool:
        """Take no more jobs; give the running one ``grace`` seconds, then send it back to the queue.
        Returns True when the thread has ended."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(grace)
        if self._thread.is_alive():
            self._interrupt.set()
            self._thread.join(60)  # the job stops at its next batch
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.store.claim(self.name)
            except Exception:  # the database is away for a moment: try again later, do not die
                log.exception("worker %s could not claim a job", self.name)
                job = None
            if job is None:
                self._wake.wait(self.poll)
                self._wake.clear()
                continue
            self._busy.set()
            try:
                outcome = run_job(self.store, job, self.load_model, self.config, self._interrupt.is_set)
                if self.on_outcome:
                    self.on_outcome(outcome)
            except Exception:  # run_job fails jobs itself; this is the store failing under it
                log.exception("worker %s: job %s ended abnormally", self.name, job.id)
            finally:
                self._busy.clear()


__all__ = ["Worker"]
