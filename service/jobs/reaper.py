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

The shards of sharded jobs (:mod:`tileseg.jobs.shards.run`) are reaped and sent again by the same rules, each
on its own: a dead worker's shard is queued again (or, past its attempts, fails, and its job with it).

Its part in keeping every job: :mod:`tileseg.jobs`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tileseg.jobs.broker import Broker
from tileseg.jobs.periodic import Periodic
from tileseg.jobs.shards.store import ShardStore, parse_message_id
from tileseg.jobs.store import JobStatus, JobStore

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    """What one pass did."""

    requeued: list[str] = field(default_factory=list)  # leases that ran out: queued again and sent
    failed: list[str] = field(default_factory=list)  # leases that ran out once too often
    resent: list[str] = field(default_factory=list)  # queued jobs the broker had lost
    shards_requeued: list[str] = field(default_factory=list)  # shards (``<job id>:<number>``), as for jobs
    shards_failed: list[str] = field(default_factory=list)
    shards_resent: list[str] = field(default_factory=list)


def reap(store: JobStore, broker: Broker, *, lease: float, max_attempts: int, requeue_after: float) -> Reaped:
    """One pass of the reaper (see the module's docstring)."""
    done = Reaped()
    shards = ShardStore(store)
    done.requeued, done.failed = store.reap(lease, max_attempts)
    if done.requeued:
        log.warning("lease ran out for %d job(s); queued again: %s", len(done.requeued), ", ".join(done.requeued))
        _send(store, shards, broker, done.requeued)
    if done.failed:
        log.warning(
            "lease ran out for %d job(s) with no attempts left; failed: %s", len(done.failed), ", ".join(done.failed)
        )
    requeued, failed = shards.reap(lease, max_attempts)
    done.shards_requeued = [s.message_id for s in requeued]
    done.shards_failed = [s.message_id for s in failed]
    if requeued:
        log.warning("lease ran out for %d shard(s); queued again: %s", len(requeued), ", ".join(done.shards_requeued))
        _send(store, shards, broker, done.shards_requeued)
    if failed:
        log.warning("shard(s) with no attempts left failed, and their jobs: %s", ", ".join(done.shards_failed))
    _resend(store, shards, broker, requeue_after, done)
    return done


def _resend(store: JobStore, shards: ShardStore, broker: Broker, requeue_after: float, done: Reaped) -> None:
    """Send again the queued jobs and shards that nobody claimed and that the broker no longer holds."""
    unclaimed = store.unclaimed(requeue_after) + [s.message_id for s in shards.unclaimed(requeue_after)]
    if not unclaimed:
        return
    queued = store.count_by_status()[JobStatus.QUEUED] + shards.queued()
    missing = broker.missing(unclaimed, queued)
    done.resent = [m for m in missing if ":" not in m]
    done.shards_resent = [m for m in missing if ":" in m]
    if done.resent:
        log.warning("%d queued job(s) had no message in the broker; sent again", len(done.resent))
    if done.shards_resent:
        log.warning("%d queued shard(s) had no message in the broker; sent again", len(done.shards_resent))
    _send(store, shards, broker, missing)


def _send(store: JobStore, shards: ShardStore, broker: Broker, ids: list[str]) -> None:
    """Send a message for each job id or shard id (``<job id>:<number>``), and record it."""
    sent_jobs, sent_shards = [], []
    for message in ids:
        try:
            if ":" in message:
                job_id, number = parse_message_id(message)
                broker.send_shard(job_id, number)
                sent_shards.append((job_id, number))
            else:
                broker.send(message)
                sent_jobs.append(message)
        except Exception:  # the broker is away: the next pass finds the job unclaimed and tries again
            log.warning("%s could not be sent to the broker", message, exc_info=True)
            break
    store.enqueued(sent_jobs)
    shards.enqueued(sent_shards)


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
