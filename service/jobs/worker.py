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

from tileseg.jobs.periodic import Periodic
from tileseg.jobs.runner import ModelSource, Outcome, RunConfig, run_job
from tileseg.jobs.store import JobStore

log = logging.getLogger(__name__)


class Worker(Periodic):
    """Runs queued jobs in a thread.

    Args:
        store: the job table.
        load_model: ``(name, prune) -> network`` on this worker's device.
        config: how to run jobs.
        name: the worker's name in the job table.
        on_outcome: called after each job (the API's metrics).
        poll: seconds between looks at the queue when nobody calls :meth:`wake`.
    """

    def __init__(
        self,
        store: JobStore,
        load_model: ModelSource,
        config: RunConfig,
        name: str | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        poll: float = 1.0,
    ):
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        super().__init__(f"tileseg-worker-{self.name}", poll, at_start=True)
        self.store = store
        self.load_model = load_model
        self.config = config
        self.on_outcome = on_outcome
        self._interrupt = threading.Event()

    def stop(self, grace: float | None = None) -> bool:
        """Take no more jobs; give the running one ``grace`` seconds (default :attr:`stop_wait`), then send it
        back to the queue. Returns True when the thread has ended."""
        if super().stop(grace):
            return True
        self._interrupt.set()
        return self.join(60)  # the job stops at its next batch

    def step(self) -> bool:
        """Claim the oldest queued job and run it; False when there was none (then wait for a wake)."""
        job = self.store.claim(self.name)
        if job is None:
            return False
        try:
            outcome = run_job(self.store, job, self.load_model, self.config, self._interrupt.is_set)
            if self.on_outcome:
                self.on_outcome(outcome)
        except Exception:  # run_job fails jobs itself; this is the store failing under it
            log.exception("worker %s: job %s ended abnormally", self.name, job.id)
        return True


__all__ = ["Worker"]
