"""The job table's reads and state changes: the one source of truth about every job, shared by the API and
the workers. (The table's shape, its states and the database set-up: :mod:`tileseg.jobs.table`; its
``Job`` and ``JobStatus`` are imported from here too.)

SQLAlchemy Core with portable SQL, so that the same code runs on the embedded SQLite file (WAL) and, when
several machines share the work, on PostgreSQL. Every change of state is one compare-and-set statement on
the row, and every time is the database's clock. How the claims, leases, reaping and publication here keep
every job, and never publish one twice: :mod:`tileseg.jobs`.
"""

from __future__ import annotations

import builtins
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tileseg.jobs.errors import JobNotFoundError
from tileseg.jobs.table import (
    SHARD_COUNTS,
    Job,
    JobStatus,
    ShardStatus,
    clock,
    create_tables,
    health,
    jobs,
    make_engine,
    shards,
)

ANY_OWNER = object()  # the store's callers that see every job (workers, the sweeper)


def new_job_id() -> str:
    """A random UUID: ids cannot be guessed or enumerated."""
    return str(uuid.uuid4())


class JobStore:
    """The job table at a SQLAlchemy URL (``sqlite:///path/jobs.db``, later ``postgresql://...``).

    Args:
        url: the database; the table is created if missing.
    """

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        create_tables(self.engine)
        self._now = clock(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _select(self) -> sa.Select:
        """Whole rows, each with the database's clock as ``read_at`` and, for sharded jobs, their shards counted
        by state and their tiles done."""
        return sa.select(jobs, self._now.label("read_at"), *_shard_counts())

    # ---- the API's side -------------------------------------------------------------------------------------

    def create(
        self,
        *,
        id: str,
        owner: str | None,
        model: str,
        options: dict[str, Any],
        input: dict[str, Any],
        input_path: str,
        input_owned: bool,
    ) -> Job:
        """Queue a new job and return it."""
        row = dict(
            id=id,
            owner=owner,
            status=JobStatus.QUEUED.value,
            model=model,
            options=options,
            input=input,
            input_path=input_path,
            input_owned=input_owned,
            tiles_done=0,
            tiles_total=0,
            created=self._now,
            attempts=0,
        )
        with self._tx() as conn:
            conn.execute(jobs.insert().values(**row))
        return self.get(id)

    def get(self, job_id: str, owner: Any = ANY_OWNER) -> Job:
        """The job with this id.

        Raises:
            JobNotFoundError: no such job, or it belongs to another owner (the two look the same).
        """
        query = self._select().where(jobs.c.id == str(job_id))
        if owner is not ANY_OWNER:
            query = query.where(_owner_is(owner))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise JobNotFoundError(f"no job {job_id}")
        return Job.from_row(row)

    def list(self, owner: Any = ANY_OWNER, limit: int = 50, offset: int = 0) -> builtins.list[Job]:
        """Jobs, newest first."""
        query = self._select().order_by(jobs.c.created.desc(), jobs.c.id).limit(limit).offset(offset)
        if owner is not ANY_OWNER:
            query = query.where(_owner_is(owner))
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(query)]

    def count_by_status(self) -> dict[JobStatus, int]:
        """How many jobs are in each state (every state present, zero or not)."""
        query = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        with self.engine.connect() as conn:
            counts = {JobStatus(status): n for status, n in conn.execute(query)}
        return {s: counts.get(s, 0) for s in JobStatus}

    def cancel(self, job_id: str, owner: Any = ANY_OWNER) -> Job:
        """Cancel a queued or running job (a running one stops at its next progress report); a succeeded
        job's results are given up (it reads ``expired``). Returns the job as it was before.

        Raises:
            JobNotFoundError: as :meth:`get`.
        """
        job = self.get(job_id, owner)
        with self._tx() as conn:
            if not job.status.finished:
                canceled = conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job.id, jobs.c.status.in_(_ACTIVE))
                    .values(
                        status=JobStatus.CANCELED.value,
                        finished=self._now,
                        token=None,
                        error_code="canceled",
                        error_message="canceled by the client",
                    )
                ).rowcount
                if canceled:  # a sharded job's shards stop with it, running ones at their next report (the
                    # job's row first, then its shards': the order every transaction on shards locks them in)
                    conn.execute(
                        shards.update()
                        .where(shards.c.job_id == job.id, shards.c.status.in_(_SHARD_ACTIVE))
                        .values(status=ShardStatus.CANCELED.value, token=None, finished=self._now)
                    )
            elif job.status is JobStatus.SUCCEEDED:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job.id, jobs.c.status == job.status.value)
                    .values(status=JobStatus.EXPIRED.value, expires=self._now)
                )
        return job

    def ping(self) -> None:
        """Write to the database: raises if it cannot be written (``/readyz``)."""
        with self._tx() as conn:
            if conn.execute(health.update().where(health.c.id == 1).values(at=self._now)).rowcount:
                return
        try:
            with self._tx() as conn:
                conn.execute(health.insert().values(id=1, at=self._now))
        except sa.exc.IntegrityError:
            pass  # another process wrote the first row at the same moment: the database is writable

    def enqueued(self, job_ids: builtins.list[str]) -> None:
        """Record that a message for each of these jobs was just sent to the broker."""
        if job_ids:
            with self._tx() as conn:
                conn.execute(jobs.update().where(jobs.c.id.in_([str(i) for i in job_ids])).values(enqueued=self._now))

    def unclaimed(self, older_than: float, limit: int = 1000) -> builtins.list[str]:
        """Queued jobs that nobody claimed in the ``older_than`` seconds since their last message was sent
        (or since they were made): the broker may have lost them. Oldest first."""
        sent = sa.func.coalesce(jobs.c.enqueued, jobs.c.created)
        query = (
            sa.select(jobs.c.id)
            .where(jobs.c.status == JobStatus.QUEUED.value, sent < self._now - older_than)
            .order_by(jobs.c.created, jobs.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(query)]

    # ---- the workers' side ----------------------------------------------------------------------------------

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

    def expire(self, now: float | None = None) -> builtins.list[Job]:
        """Mark finished jobs whose results are past their time ``expired``; returns them (their files are
        the caller's to remove). ``now``: the time to judge by, default the database's clock."""
        due = sa.and_(
            jobs.c.status == JobStatus.SUCCEEDED.value,
            jobs.c.expires.is_not(None),
            jobs.c.expires < (self._now if now is None else now),
        )
        with self.engine.connect() as conn:
            candidates = [Job.from_row(r) for r in conn.execute(self._select().where(due))]
        done = []
        for job in candidates:
            with self._tx() as conn:
                changed = conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job.id, jobs.c.status == job.status.value)
                    .values(status=JobStatus.EXPIRED.value)
                ).rowcount
            if changed:
                done.append(job)
        return done


_ACTIVE = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
_SHARD_ACTIVE = [ShardStatus.QUEUED.value, ShardStatus.RUNNING.value]


def _pending_shards() -> sa.Select:
    """The job's shards not done yet (correlated with the job's row)."""
    return sa.select(shards.c.number).where(shards.c.job_id == jobs.c.id, shards.c.status != ShardStatus.DONE.value)


def _shard_counts() -> list[sa.Label]:
    """A job's shards counted by state (``shards_total``, ``shards_queued``, ...) and their tiles done
    (``shards_tiles``): correlated subqueries, read with the job's row."""
    mine = shards.c.job_id == jobs.c.id
    labels = []
    for key in SHARD_COUNTS:
        where = [mine] if key == "total" else [mine, shards.c.status == key]
        labels.append(sa.select(sa.func.count()).where(*where).scalar_subquery().label(f"shards_{key}"))
    tiles = sa.select(sa.func.coalesce(sa.func.sum(shards.c.tiles_done), 0)).where(mine)
    return [*labels, tiles.scalar_subquery().label("shards_tiles")]


def _owned(job_id: str, token: str) -> tuple:
    return jobs.c.id == str(job_id), jobs.c.token == token, jobs.c.status == JobStatus.RUNNING.value


def _owner_is(owner: str | None):
    return jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner


__all__ = ["ANY_OWNER", "Job", "JobStatus", "JobStore", "new_job_id"]
