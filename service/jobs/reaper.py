"""The reaper: puts back in the queue the jobs whose worker died, and sends again the jobs the broker lost.

Queue mode only (the embedded server, the only worker of its table, recovers its jobs when it starts).
Every ``interval`` seconds, in every worker and in the API (each row moves in one compare-and-set, so
many reapers at once do no harm):

1. Running jobs whose lease ran out go back to ``queued``, or fail past ``TILESEG_MAX_ATTEMPTS``; those
   requeued are sent to the broker at once. A dead worker's job therefore starts again within
   ``lease + interval`` seconds, not when the broker's own visibility timeout (an hour, on Redis) hands
   its unacknowledged message back; that message, when it comes, finds the job taken and is a no-op.
2. Queued jobs that nobody claimed for ``requeue_after`` seconds since their last message, and whose id is
   not in the broker's queue, are sent again: a broker restarted empty loses its queue, never the jobs.

Its part in keeping every job: :mod:`tileseg.jobs`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tileseg.jobs.broker import Broker
from tileseg.jobs.periodic import Periodic
from tileseg.jobs.store import JobStatus, JobStore

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    """What one pass did."""

    requeued: list[str] = field(default_factory=list)  # leases that ran out: queued again and sent
    failed: list[str] = field(default_factory=list)  # leases that ran out once too often
    resent: list[str] = field(default_factory=list)  # queued jobs the broker had lost


def reap(store: JobStore, broker: Broker, *, lease: float, max_attempts: int, requeue_after: float) -> Reaped:
    """One pass of the reaper (see the module's docstring)."""
    done = Reaped()
    done.requeued, done.failed = store.reap(lease, max_attempts)
    if done.requeued:
        log.warning("lease ran out for %d job(s); queued again: %s", len(done.requeued), ", ".join(done.requeued))
        _send(store, broker, done.requeued)
    if done.failed:
        log.warning(
            "lease ran out for %d job(s) with no attempts left; failed: %s", len(done.failed), ", ".join(done.failed)
        )
    unclaimed = store.unclaimed(requeue_after)
    if unclaimed:
        queued = store.count_by_status()[JobStatus.QUEUED]
        done.resent = broker.missing(unclaimed, queued)
        if done.resent:
            log.warning("%d queued job(s) had no message in the broker; sent again", len(done.resent))
            _send(store, broker, done.resent)
    return done


def _send(store: JobStore, broker: Broker, job_ids: list[str]) -> None:
    sent = []
    for job_id in job_ids:
        try:
            broker.send(job_id)
            sent.append(job_id)
        except Exception:  # the broker is away: the next pass finds the job unclaimed and tries again
            log.warning("job %s could not be sent to the broker", job_id, exc_info=True)
            break
    store.enqueued(sent)


class Reaper(Periodic):
    """Runs :func:`reap` every ``interval`` seconds in a thread until stopped."""

    stop_wait = 30.0  # a pass may be waiting on the broker's send retries

    def __init__(
        self, store: JobStore, broker: Broker, *, lease: float, max_attempts: int, requeue_after: float, interval: float
    ):
        super().__init__("tileseg-reaper", interval)
        self.store = store
        self.broker = broker
        self.lease, self.max_attempts, self.requeue_after = lease, max_attempts, requeue_after

    def step(self) -> None:
        """One pass."""
        reap(
            self.store, self.broker, lease=self.lease, max_attempts=self.max_attempts, requeue_after=self.requeue_after
        )


__all__ = ["Reaped", "Reaper", "reap"]
