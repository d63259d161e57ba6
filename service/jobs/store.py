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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tileseg.jobs.batchstore import BatchRows
from tileseg.jobs.errors import JobNotFoundError
from tileseg.jobs.leases import Leases
from tileseg.jobs.outbox import Outbox
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


class JobStore(Leases, BatchRows, Outbox):
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
        callback: dict[str, str] | None = None,
    ) -> Job:
        """Queue a new job and return it. ``callback``: where its callbacks go, by the status that sends them."""
        row = job_row(id, owner, model, options, input, input_path, input_owned, callback=callback)
        with self._tx() as conn:
            conn.execute(jobs.insert().values(**row, created=self._now))
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

    # claim, progress, renew, finish, release, recover and reap: :class:`tileseg.jobs.leases.Leases`

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


def job_row(
    id: str,
    owner: str | None,
    model: str,
    options: dict[str, Any],
    input: dict[str, Any],
    input_path: str,
    input_owned: bool,
    callback: dict[str, str] | None = None,
    batch_id: str | None = None,
) -> dict[str, Any]:
    """A queued job's row, but for its ``created`` time (the database's clock, given where it is inserted)."""
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
        attempts=0,
        batch_id=batch_id,
    )
    if callback:  # absent rather than JSON null: the outbox looks for jobs whose column is set
        row["callback"] = callback
    return row


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


def _owner_is(owner: str | None):
    return jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner


__all__ = ["ANY_OWNER", "Job", "JobStatus", "JobStore", "job_row", "new_job_id"]
