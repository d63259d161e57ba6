"""The callbacks' outbox in the job table: which jobs and batches have callbacks due, the deliveries queued for
them, and each delivery's attempts.

A job's status changes wherever its attempt runs (a queue worker on another machine, an embedded worker
thread); the outbox does not ask those to post anything. The server looks for jobs whose status has callbacks
that are not queued yet (``notified`` is not their status) and, in one transaction, marks the status notified
and queues its deliveries, each body fixed then. Deliveries stay until they are delivered or their time is up,
whatever restarts in between: at least once. Every change is one compare-and-set, as everywhere in the table,
so that several servers on one database queue each delivery once and send it one at a time.

Mixed into :class:`tileseg.jobs.store.JobStore`, whose database and clock these use: callers import the store
only.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tileseg.jobs.batchstore import Batch
from tileseg.jobs.table import DeliveryStatus, Job, JobStatus, batches, deliveries, jobs

# The job statuses that may send a callback (``expired`` comes later, of a job already notified as succeeded).
EVENTS = (JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
BATCH_FINISHED = "finished"  # a batch's one event: every job of it has ended


@dataclass(frozen=True)
class Delivery:
    """One row of the outbox."""

    id: str
    job_id: str | None
    batch_id: str | None
    event: str
    url: str
    body: str
    status: str
    attempts: int
    created: float
    due: float
    held_until: float | None = None
    finished: float | None = None
    last_error: str | None = None
    read_at: float | None = None  # not a column: the database's clock when the row was read


def new_delivery(url: str, event: str, body: str, delivery_id: str | None = None) -> dict[str, str]:
    """A delivery to queue (:meth:`Outbox.queue_job_deliveries`): where it goes, why, and its exact body."""
    return {"id": delivery_id or str(uuid.uuid4()), "url": url, "event": event, "body": body}


class Outbox:
    """:class:`tileseg.jobs.store.JobStore`'s outbox: find callbacks due, queue them, claim and settle deliveries."""

    # the store's, which mixes this in
    engine: Engine
    _now: sa.ColumnElement
    _tx: Callable[[], AbstractContextManager[Connection]]
    _select: Callable[[], sa.Select]

    def unnotified_jobs(self, limit: int = 100) -> builtins.list[Job]:
        """Jobs with callbacks whose current status has not been notified yet, oldest first."""
        query = (
            self._select()
            .where(jobs.c.callback.is_not(None), jobs.c.status.in_([e.value for e in EVENTS]), _not_notified())
            .order_by(jobs.c.created, jobs.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(query)]

    def queue_job_deliveries(self, job: Job, queued: builtins.list[dict[str, str]]) -> bool:
        """Mark ``job``'s status as notified and queue ``queued`` (of :func:`new_delivery`), in one transaction;
        False (nothing queued) when the job has moved on since it was read, or another server did it."""
        with self._tx() as conn:
            marked = conn.execute(
                jobs.update()
                .where(jobs.c.id == job.id, jobs.c.status == job.status.value, _not_notified())
                .values(notified=job.status.value)
            ).rowcount
            for delivery in queued if marked else []:
                conn.execute(deliveries.insert().values(**_pending(delivery, self._now), job_id=job.id))
        return bool(marked)

    def finished_batches(self, limit: int = 100) -> builtins.list[Batch]:
        """Batches with a callback, not yet notified, none of whose jobs is queued or running."""
        active = (
            sa.select(jobs.c.id)
            .where(jobs.c.batch_id == batches.c.id, jobs.c.status.in_([s.value for s in ACTIVE]))
            .exists()
        )
        query = sa.select(batches).where(batches.c.callback.is_not(None), batches.c.notified.is_(None), ~active)
        with self.engine.connect() as conn:
            return [Batch(**r._mapping) for r in conn.execute(query.order_by(batches.c.created).limit(limit))]

    def queue_batch_delivery(self, batch: Batch, delivery: dict[str, str]) -> bool:
        """Mark the batch notified and queue its delivery, in one transaction (False: another server did)."""
        with self._tx() as conn:
            marked = conn.execute(
                batches.update()
                .where(batches.c.id == batch.id, batches.c.notified.is_(None))
                .values(notified=self._now)
            ).rowcount
            if marked:
                conn.execute(deliveries.insert().values(**_pending(delivery, self._now), batch_id=batch.id))
        return bool(marked)

    def due_deliveries(self, hold: float, limit: int = 20) -> builtins.list[Delivery]:
        """Claim pending deliveries that are due and not held by another sender, for ``hold`` seconds."""
        free = sa.or_(deliveries.c.held_until.is_(None), deliveries.c.held_until < self._now)
        pending = deliveries.c.status == DeliveryStatus.PENDING.value
        query = (
            sa.select(deliveries, self._now.label("read_at"))
            .where(pending, deliveries.c.due <= self._now, free)
            .order_by(deliveries.c.due, deliveries.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            candidates = [Delivery(**r._mapping) for r in conn.execute(query)]
        claimed = []
        for delivery in candidates:
            with self._tx() as conn:
                taken = conn.execute(
                    deliveries.update()
                    .where(deliveries.c.id == delivery.id, pending, free)
                    .values(held_until=self._now + hold)
                ).rowcount
            if taken:
                claimed.append(delivery)
        return claimed

    def delivered(self, delivery_id: str) -> None:
        """The receiver took it (a 2xx answer)."""
        self._settle(delivery_id, status=DeliveryStatus.DELIVERED.value, finished=self._now, last_error=None)

    def delivery_failed(self, delivery_id: str, error: str, retry_in: float | None) -> None:
        """An attempt failed with ``error``: the next is due in ``retry_in`` seconds, or never (None: abandoned)."""
        if retry_in is None:
            self._settle(delivery_id, status=DeliveryStatus.ABANDONED.value, finished=self._now, last_error=error)
        else:
            self._settle(delivery_id, due=self._now + retry_in, last_error=error)

    def deliveries_of(self, job_id: str | None = None, batch_id: str | None = None) -> builtins.list[Delivery]:
        """The deliveries queued for a job or a batch, oldest first."""
        where = deliveries.c.job_id == job_id if job_id is not None else deliveries.c.batch_id == batch_id
        query = sa.select(deliveries).where(where).order_by(deliveries.c.created, deliveries.c.id)
        with self.engine.connect() as conn:
            return [Delivery(**r._mapping) for r in conn.execute(query)]

    def _settle(self, delivery_id: str, **values) -> None:
        with self._tx() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery_id, deliveries.c.status == DeliveryStatus.PENDING.value)
                .values(**values, attempts=deliveries.c.attempts + 1, held_until=None)
            )


def _not_notified() -> sa.ColumnElement[bool]:
    return sa.or_(jobs.c.notified.is_(None), jobs.c.notified != jobs.c.status)


def _pending(delivery: dict[str, str], now: sa.ColumnElement) -> dict:
    return {**delivery, "status": DeliveryStatus.PENDING.value, "attempts": 0, "created": now, "due": now}


__all__ = ["BATCH_FINISHED", "EVENTS", "Delivery", "Outbox", "new_delivery"]
