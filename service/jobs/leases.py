"""The workers' side of the job table: a job's attempts, each holding the job under a lease. A claim starts
an attempt under a fresh token; its heartbeats and progress reports renew the lease; the attempt ends the
job, or hands it back to the queue; a job whose lease ran out (its worker died) is reaped: queued again, or
failed. Each change is one compare-and-set on the row, and an attempt's own take effect only while its token
still holds the job (how this keeps every job: :mod:`tileseg.jobs`).

Mixed into :class:`tileseg.jobs.store.JobStore`, whose database, clock and reads these use: callers import
the store only.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tileseg.jobs.table import Job, JobStatus, ShardStatus, jobs, shards


class Leases:
    """A job's attempts and their leases: :class:`tileseg.jobs.store.JobStore`'s claim, progress, renew,
    finish, release, recover and reap."""

    # the store's, which mixes this in
    engine: Engine
    _now: sa.ColumnElement
    _tx: Callable[[], AbstractContextManager[Connection]]
    _select: Callable[[], sa.Select]

    def claim(self, worker: str, job_id: str | None = None) -> Job | None:
        """Atomically take the oldest queued job (or the one given), mark it running under a fresh attempt
        token and count the attempt; None when there is nothing to take."""
        token = secrets.token_hex(16)
        oldest = (
            sa.select(jobs.c.id)
            .where(jobs.c.status == JobStatus.QUEUED.value)
            .order_by(jobs.c.created, jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )  # PostgreSQL: workers skip each other's rows; SQLite ignores it
        target = jobs.c.id == (str(job_id) if job_id else oldest.scalar_subquery())
        with self._tx() as conn:
            claimed = conn.execute(
                jobs.update()
                .where(target, jobs.c.status == JobStatus.QUEUED.value)
                .values(
                    status=JobStatus.RUNNING.value,
                    token=token,
                    worker=worker,
                    started=self._now,
                    heartbeat=self._now,
                    attempts=jobs.c.attempts + 1,
                    tiles_done=0,
                    finished=None,
                )
            ).rowcount
        if not claimed:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(self._select().where(jobs.c.token == token)).first()
        return Job.from_row(row) if row is not None else None

    def progress(self, job_id: str, token: str, done: int, total: int) -> bool:
        """Record progress and beat the heart; False when the attempt no longer owns the job (canceled)."""
        with self._tx() as conn:
            return (
                conn.execute(
                    jobs.update()
                    .where(*_owned(job_id, token))
                    .values(tiles_done=done, tiles_total=total, heartbeat=self._now)
                ).rowcount
                == 1
            )

    def renew(self, job_id: str, token: str) -> bool:
        """Beat the heart of a running attempt (renew its lease); False when it no longer owns the job."""
        with self._tx() as conn:
            return conn.execute(jobs.update().where(*_owned(job_id, token)).values(heartbeat=self._now)).rowcount == 1

    def finish(
        self,
        job_id: str,
        token: str,
        status: JobStatus,
        *,
        error: tuple[str, str] | None = None,
        ttl: float | None = None,
        result: dict[str, Any] | None = None,
    ) -> bool:
        """End an attempt as succeeded or failed; False when it no longer owned the job (canceled, or its
        lease ran out and the job went to another attempt). A success publishes the attempt: its token is
        kept as ``published``, the one attempt whose files are the job's results.

        Args:
            job_id, token: the job and the attempt that ends it.
            status: ``succeeded`` or ``failed``.
            error: a failure's ``(code, message)``.
            ttl: seconds the results are kept (from now, on the database's clock); None: no end.
            result: a success's summary of the run (JSON-serialisable), kept with the published attempt.
        """
        code, message = error or (None, None)
        published = token if status is JobStatus.SUCCEEDED else None
        expires = None if ttl is None else self._now + ttl
        with self._tx() as conn:
            return (
                conn.execute(
                    jobs.update()
                    .where(*_owned(job_id, token))
                    .values(
                        status=status.value,
                        finished=self._now,
                        token=None,
                        error_code=code,
                        error_message=message,
                        expires=expires,
                        published=published,
                        result=result if status is JobStatus.SUCCEEDED else None,
                    )
                ).rowcount
                == 1
            )

    def release(self, job_id: str, token: str) -> bool:
        """Put a running job back in the queue without counting the attempt (a graceful stop)."""
        with self._tx() as conn:
            return (
                conn.execute(
                    jobs.update()
                    .where(*_owned(job_id, token))
                    .values(
                        status=JobStatus.QUEUED.value,
                        token=None,
                        worker=None,
                        started=None,
                        heartbeat=None,
                        tiles_done=0,
                        attempts=sa.case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0),
                    )
                ).rowcount
                == 1
            )

    def recover(self, stale_before: float, max_attempts: int) -> tuple[builtins.list[str], builtins.list[str]]:
        """Requeue running jobs whose heartbeat is older than ``stale_before`` (their worker died); fail
        those that have already been started ``max_attempts`` times. Returns (requeued, failed) ids."""
        return self._requeue_stale(stale_before, max_attempts)

    def reap(self, lease: float, max_attempts: int) -> tuple[builtins.list[str], builtins.list[str]]:
        """:meth:`recover` the running jobs whose lease has run out: no heartbeat for ``lease`` seconds, on
        the database's clock. Safe to run in every process at once: each row moves in one compare-and-set.
        Returns (requeued, failed) ids."""
        return self._requeue_stale(self._now - lease, max_attempts)

    def _requeue_stale(self, stale_before: Any, max_attempts: int) -> tuple[builtins.list[str], builtins.list[str]]:
        stale = sa.and_(
            jobs.c.status == JobStatus.RUNNING.value,
            sa.or_(jobs.c.heartbeat.is_(None), jobs.c.heartbeat < stale_before),
            # a sharded job lives in its shards (each leased and reaped on its own) until all are done; then
            # its assembly holds the job's own lease
            sa.or_(jobs.c.plan.is_(None), ~_pending_shards().exists()),
        )
        with self.engine.connect() as conn:
            found = list(conn.execute(sa.select(jobs.c.id, jobs.c.attempts).where(stale)))
        requeued: builtins.list[str] = []
        failed: builtins.list[str] = []
        for job_id, attempts in found:
            if attempts >= max_attempts:
                values: dict[str, Any] = dict(
                    status=JobStatus.FAILED.value,
                    finished=self._now,
                    token=None,
                    error_code="too_many_attempts",
                    error_message=f"the job was interrupted {attempts} time(s) (the server stopped or "
                    f"crashed while it ran); giving up after {max_attempts} attempt(s)",
                )
                bucket = failed
            else:
                values = dict(status=JobStatus.QUEUED.value, token=None, worker=None, heartbeat=None, tiles_done=0)
                bucket = requeued
            # each row in its own statement, the condition checked again: a job that moved meanwhile is left be
            with self._tx() as conn:
                if conn.execute(jobs.update().where(jobs.c.id == job_id, stale).values(**values)).rowcount:
                    bucket.append(job_id)
        return requeued, failed


def _pending_shards() -> sa.Select:
    """The job's shards not done yet (correlated with the job's row)."""
    return sa.select(shards.c.number).where(shards.c.job_id == jobs.c.id, shards.c.status != ShardStatus.DONE.value)


def _owned(job_id: str, token: str) -> tuple:
    return jobs.c.id == str(job_id), jobs.c.token == token, jobs.c.status == JobStatus.RUNNING.value
