"""The shards of sharded jobs in the job table: each shard's state changes, one compare-and-set each, as a
job's are (:mod:`tileseg.jobs.store`).

A sharded job is ``running`` from its planning to its publication. Its planning attempt writes the plan
and one ``queued`` row per shard in one transaction; each shard is then claimed, leased, beaten, reaped
and retried on its own (``attempts`` counts per shard), with the same rules as a job (:mod:`tileseg.jobs`).
A shard's claim and reports hold only while its job is ``running``: cancel a job (its shards turn
``canceled`` with it) or fail it, and every shard learns it at its next report. The job's own lease is not
beaten while shards run (the reaper leaves such a job alone); the shard that finishes last takes it, in the
same transaction as its own end, and holds it while it assembles the job's results.
"""

from __future__ import annotations

import builtins
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tileseg.jobs.store import JobStore
from tileseg.jobs.table import JobStatus, ShardStatus, clock, jobs, shards


@dataclass(frozen=True)
class Shard:
    """One row of the shards table."""

    job_id: str
    number: int
    status: ShardStatus
    tiles_done: int
    tiles_total: int
    created: float
    started: float | None = None
    finished: float | None = None
    heartbeat: float | None = None
    attempts: int = 0
    token: str | None = None
    worker: str | None = None
    enqueued: float | None = None
    published: str | None = None
    result: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None

    @classmethod
    def from_row(cls, row: sa.Row) -> Shard:
        data = dict(row._mapping)
        data["status"] = ShardStatus(data["status"])
        return cls(**data)

    @property
    def message_id(self) -> str:
        """The id of its broker messages: ``<job id>:<number>``."""
        return message_id(self.job_id, self.number)


def message_id(job_id: str, number: int) -> str:
    return f"{job_id}:{number}"


def parse_message_id(text: str) -> tuple[str, int]:
    job_id, _, number = text.rpartition(":")
    return job_id, int(number)


class ShardStore:
    """The shards of the job table of ``store`` (its database and its clock)."""

    def __init__(self, store: JobStore):
        self.engine = store.engine
        self._now = clock(self.engine)

    def plan(self, job_id: str, token: str, plan: dict[str, Any], tiles: builtins.list[int]) -> bool:
        """Record a running job's plan and queue its shards (``tiles[i]``: shard i's tiles), in one
        transaction; False when the attempt ``token`` no longer holds the job."""
        with self.engine.begin() as conn:
            owned = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.token == token, jobs.c.status == JobStatus.RUNNING.value)
                .values(plan=plan, tiles_total=sum(tiles), tiles_done=0, heartbeat=self._now)
            ).rowcount
            if not owned:
                return False
            for number, count in enumerate(tiles):
                conn.execute(
                    shards.insert().values(
                        job_id=job_id,
                        number=number,
                        status=ShardStatus.QUEUED.value,
                        tiles_done=0,
                        tiles_total=count,
                        attempts=0,
                        created=self._now,
                    )
                )
        return True

    def list(self, job_id: str) -> builtins.list[Shard]:
        """The job's shards, top band first."""
        query = sa.select(shards).where(shards.c.job_id == job_id).order_by(shards.c.number)
        with self.engine.connect() as conn:
            return [Shard.from_row(r) for r in conn.execute(query)]

    def get(self, job_id: str, number: int) -> Shard | None:
        query = sa.select(shards).where(shards.c.job_id == job_id, shards.c.number == number)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return Shard.from_row(row) if row is not None else None

    def claim(self, worker: str, job_id: str, number: int) -> Shard | None:
        """Take a queued shard of a running job under a fresh attempt token and count the attempt; None when
        there is nothing to take (taken, done, or its job is no longer running)."""
        token = secrets.token_hex(16)
        with self.engine.begin() as conn:
            claimed = conn.execute(
                shards.update()
                .where(
                    shards.c.job_id == job_id,
                    shards.c.number == number,
                    shards.c.status == ShardStatus.QUEUED.value,
                    _job_running(),
                )
                .values(
                    status=ShardStatus.RUNNING.value,
                    token=token,
                    worker=worker,
                    started=self._now,
                    heartbeat=self._now,
                    attempts=shards.c.attempts + 1,
                    tiles_done=0,
                )
            ).rowcount
        if not claimed:
            return None
        shard = self.get(job_id, number)
        return shard if shard is not None and shard.token == token else None

    def progress(self, shard: Shard, done: int) -> bool:
        """Record the shard's tiles done and beat its heart; False when the attempt no longer holds it (its
        job canceled or failed, or its lease gone to another attempt)."""
        return self._update(shard, tiles_done=done, heartbeat=self._now)

    def renew(self, shard: Shard) -> bool:
        """Beat the shard's heart; False as :meth:`progress`."""
        return self._update(shard, heartbeat=self._now)

    def release(self, shard: Shard) -> bool:
        """Put a running shard back in the queue without counting the attempt (its worker is stopping)."""
        return self._update(
            shard,
            status=ShardStatus.QUEUED.value,
            token=None,
            worker=None,
            heartbeat=None,
            tiles_done=0,
            attempts=sa.case((shards.c.attempts > 0, shards.c.attempts - 1), else_=0),
        )

    def finish(self, shard: Shard, result: dict[str, Any], worker: str) -> tuple[bool, bool]:
        """End a shard's attempt as done, its files (``result``) the shard's. Returns (ended, last): whether
        this attempt still held the shard, and whether it was the job's last shard to finish. The last one
        takes the job's lease for ``worker`` in the same transaction, to assemble the results.

        The job's row is updated (locked) first, so that the shards of one job end one after another and
        exactly one of them sees no other left.
        """
        with self.engine.begin() as conn:
            if not _hold_job(conn, shard.job_id, self._now):
                return False, False
            ended = conn.execute(
                shards.update()
                .where(*_owned(shard))
                .values(
                    status=ShardStatus.DONE.value,
                    finished=self._now,
                    published=shard.token,
                    result=result,
                    tiles_done=shards.c.tiles_total,
                )
            ).rowcount
            if not ended:
                return False, False
            left = conn.execute(
                sa.select(sa.func.count()).where(
                    shards.c.job_id == shard.job_id, shards.c.status != ShardStatus.DONE.value
                )
            ).scalar_one()
            if left:
                return True, False
            conn.execute(jobs.update().where(jobs.c.id == shard.job_id).values(worker=worker, heartbeat=self._now))
        return True, True

    def fail(self, shard: Shard, code: str, message: str) -> bool:
        """Fail the shard for good, and its job with the same reason, in one transaction; the job's other
        shards are canceled. False when the attempt no longer held the shard, or the job had ended."""
        with self.engine.begin() as conn:
            if not _hold_job(conn, shard.job_id, self._now):
                return False
            ended = conn.execute(
                shards.update()
                .where(*_owned(shard))
                .values(status=ShardStatus.FAILED.value, finished=self._now, error_code=code, error_message=message)
            ).rowcount
            return bool(ended) and _fail_job(conn, shard.job_id, code, message, self._now)

    def reap(self, lease: float, max_attempts: int) -> tuple[builtins.list[Shard], builtins.list[Shard]]:
        """Requeue running shards whose heartbeat is older than ``lease`` seconds (their worker died), or,
        past ``max_attempts``, fail them and their job. Returns (requeued, failed)."""
        stale = sa.and_(
            shards.c.status == ShardStatus.RUNNING.value,
            sa.or_(shards.c.heartbeat.is_(None), shards.c.heartbeat < self._now - lease),
        )
        with self.engine.connect() as conn:
            found = [Shard.from_row(r) for r in conn.execute(sa.select(shards).where(stale))]
        requeued, failed = [], []
        for shard in found:
            key = (shards.c.job_id == shard.job_id, shards.c.number == shard.number, stale)
            with self.engine.begin() as conn:  # each row in its own compare-and-set, the condition checked again
                if shard.attempts < max_attempts:
                    values = dict(
                        status=ShardStatus.QUEUED.value, token=None, worker=None, heartbeat=None, tiles_done=0
                    )
                    if conn.execute(shards.update().where(*key).values(**values)).rowcount:
                        requeued.append(shard)
                elif self._give_up(conn, shard, key, max_attempts):
                    failed.append(shard)
        return requeued, failed

    def _give_up(self, conn, shard: Shard, key: tuple, max_attempts: int) -> bool:
        """Fail a stale shard out of attempts, and its job, in the caller's transaction."""
        code = "too_many_attempts"
        message = (
            f"shard {shard.number + 1} was interrupted {shard.attempts} time(s) (its worker stopped or crashed "
            f"while it ran); giving up after {max_attempts} attempt(s)"
        )
        if not _hold_job(conn, shard.job_id, self._now):
            return False  # the job ended meanwhile: its shards are not the reaper's to fail
        values = dict(status=ShardStatus.FAILED.value, finished=self._now, error_code=code, error_message=message)
        if not conn.execute(shards.update().where(*key).values(**values)).rowcount:
            return False
        return _fail_job(conn, shard.job_id, code, message, self._now)

    def unclaimed(self, older_than: float, limit: int = 1000) -> builtins.list[Shard]:
        """Queued shards of running jobs that nobody claimed in the ``older_than`` seconds since their last
        message was sent: the broker may have lost them. Oldest first."""
        sent = sa.func.coalesce(shards.c.enqueued, shards.c.created)
        query = (
            sa.select(shards)
            .where(shards.c.status == ShardStatus.QUEUED.value, _job_running(), sent < self._now - older_than)
            .order_by(shards.c.created, shards.c.job_id, shards.c.number)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Shard.from_row(r) for r in conn.execute(query)]

    def queued(self) -> int:
        """How many shards are queued (messages that should be waiting in the broker)."""
        query = sa.select(sa.func.count()).where(shards.c.status == ShardStatus.QUEUED.value, _job_running())
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def enqueued(self, sent: builtins.list[tuple[str, int]]) -> None:
        """Record that a message for each of these shards (job id, number) was just sent to the broker."""
        with self.engine.begin() as conn:
            for job_id, number in sent:
                conn.execute(
                    shards.update()
                    .where(shards.c.job_id == job_id, shards.c.number == number)
                    .values(enqueued=self._now)
                )

    def _update(self, shard: Shard, **values: Any) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(shards.update().where(*_owned(shard), _job_running()).values(**values)).rowcount == 1


def _owned(shard: Shard) -> tuple:
    return (
        shards.c.job_id == shard.job_id,
        shards.c.number == shard.number,
        shards.c.token == shard.token,
        shards.c.status == ShardStatus.RUNNING.value,
    )


def _job_running() -> sa.ColumnElement[bool]:
    """The shard's job is running (correlated with the shard's row)."""
    return sa.select(jobs.c.id).where(jobs.c.id == shards.c.job_id, jobs.c.status == JobStatus.RUNNING.value).exists()


def _hold_job(conn, job_id: str, now) -> bool:
    """Lock the row of a running job for the rest of the caller's transaction (by updating its heartbeat),
    and say whether it is running. Every transaction that changes more than one shard, or a shard and its job,
    locks the job's row first, so on PostgreSQL they run one after another and never deadlock; on SQLite the
    first statement is then a write, which takes the database's write lock at once."""
    running = jobs.update().where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
    return bool(conn.execute(running.values(heartbeat=now)).rowcount)


def _fail_job(conn, job_id: str, code: str, message: str, now) -> bool:
    """Fail a running job and cancel its other shards, within the caller's transaction."""
    failed = conn.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
        .values(status=JobStatus.FAILED.value, finished=now, token=None, error_code=code, error_message=message)
    ).rowcount
    conn.execute(
        shards.update()
        .where(shards.c.job_id == job_id, shards.c.status.in_([ShardStatus.QUEUED.value, ShardStatus.RUNNING.value]))
        .values(status=ShardStatus.CANCELED.value, token=None, finished=now)
    )
    return bool(failed)


__all__ = ["Shard", "ShardStore", "message_id", "parse_message_id"]
