"""The batches' side of the job table: a batch row and its jobs written in one transaction, under the
per-key limit of jobs waiting or running; a batch read, its jobs counted by status, listed a page at a time.

A batch's jobs are ordinary rows of ``jobs`` (claimed, leased, retried and canceled as every job is), carrying
the batch's id. Mixed into :class:`tileseg.jobs.store.JobStore`, whose database and clock these use: callers
import the store only.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tileseg.jobs.errors import BatchNotFoundError, TooManyJobsError
from tileseg.jobs.table import Job, JobStatus, batches, jobs

_ACTIVE = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
# SQLite has one writer and one server process: a lock here makes the count and the inserts one step. On
# PostgreSQL, an advisory lock per key does, across every API process.
_sqlite_lock = threading.Lock()


@dataclass(frozen=True)
class Batch:
    """One row of the batch table."""

    id: str
    owner: str | None
    model: str
    options: dict[str, Any]
    size: int
    created: float
    callback: str | None = None
    notified: float | None = None


class BatchRows:
    """:class:`tileseg.jobs.store.JobStore`'s batches: create, read, count and list their jobs."""

    # the store's, which mixes this in
    engine: Engine
    _now: sa.ColumnElement
    _tx: Callable[[], AbstractContextManager[Connection]]
    _select: Callable[[], sa.Select]

    def create_batch(self, batch: dict[str, Any], rows: builtins.list[dict[str, Any]], limit: int) -> Batch:
        """Write a batch and its queued jobs (rows of :func:`tileseg.jobs.store.job_row`), all or none.

        Args:
            batch: the batch's ``id``, ``owner``, ``model``, ``options`` and ``callback``.
            rows: its jobs' rows.
            limit: the most jobs the owner may have queued or running, these included.

        Raises:
            TooManyJobsError: the owner would pass ``limit``; nothing is written.
        """
        owner = batch["owner"]
        lock: AbstractContextManager[Any] = _sqlite_lock if self.engine.dialect.name == "sqlite" else nullcontext()
        with lock, self._tx() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"tileseg-batch:{owner}"))))
            active = conn.execute(
                sa.select(sa.func.count()).where(_owner_is(owner), jobs.c.status.in_(_ACTIVE))
            ).scalar_one()
            if active + len(rows) > limit:
                raise TooManyJobsError(
                    f"this key has {active} job(s) queued or running; with this batch's {len(rows)} it would pass "
                    f"the limit of {limit} (TILESEG_BATCH_MAX_JOBS): try again once some have finished"
                )
            conn.execute(batches.insert().values(**batch, size=len(rows), created=self._now))
            for row in rows:  # one by one: each with the database's clock, in the sources' order
                conn.execute(jobs.insert().values(**{**row, "batch_id": batch["id"]}, created=self._now))
        return self.get_batch(batch["id"])

    def get_batch(self, batch_id: str, owner: Any = None, any_owner: bool = True) -> Batch:
        """The batch with this id; with ``any_owner`` False, only if ``owner``'s.

        Raises:
            BatchNotFoundError: no such batch, or another owner's (the two look the same).
        """
        query = sa.select(batches).where(batches.c.id == str(batch_id))
        if not any_owner:
            query = query.where(batches.c.owner.is_(None) if owner is None else batches.c.owner == owner)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise BatchNotFoundError(f"no batch {batch_id}")
        return Batch(**row._mapping)

    def batch_counts(self, batch_id: str) -> dict[JobStatus, int]:
        """The batch's jobs counted by status (every status present, zero or not)."""
        query = sa.select(jobs.c.status, sa.func.count()).where(jobs.c.batch_id == batch_id).group_by(jobs.c.status)
        with self.engine.connect() as conn:
            counts = {JobStatus(status): n for status, n in conn.execute(query)}
        return {s: counts.get(s, 0) for s in JobStatus}

    def batch_jobs(self, batch_id: str, limit: int = 100, offset: int = 0) -> builtins.list[Job]:
        """A page of the batch's jobs, in the order of its sources."""
        query = (
            self._select()
            .where(jobs.c.batch_id == batch_id)
            .order_by(jobs.c.created, jobs.c.id)
            .limit(limit)
            .offset(offset)
        )
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(query)]

    def batch_job_ids(self, batch_id: str, active_only: bool = False) -> builtins.list[str]:
        """The ids of the batch's jobs (only those queued or running, with ``active_only``), in order."""
        query = sa.select(jobs.c.id).where(jobs.c.batch_id == batch_id).order_by(jobs.c.created, jobs.c.id)
        if active_only:
            query = query.where(jobs.c.status.in_(_ACTIVE))
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(query)]


def _owner_is(owner: str | None):
    return jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner


__all__ = ["Batch", "BatchRows"]
