"""The job table's shape and its database: the columns, the row as a record, the states a job passes
through, and the set-up of a SQLAlchemy engine for SQLite (WAL) or PostgreSQL with the database's own clock.

What changes a row, each change one compare-and-set: :mod:`tileseg.jobs.store`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


class JobStatus(str, enum.Enum):
    """Where a job is in its life: queued -> running -> succeeded | failed | canceled; succeeded -> expired."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def finished(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


metadata = sa.MetaData()
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=True),  # a hash of the API key; never the key itself
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("input", sa.JSON, nullable=False),
    sa.Column("input_path", sa.Text, nullable=False),
    sa.Column("input_owned", sa.Boolean, nullable=False),  # an upload, deleted when the job ends
    sa.Column("tiles_done", sa.Integer, nullable=False, default=0),
    sa.Column("tiles_total", sa.Integer, nullable=False, default=0),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("started", sa.Float, nullable=True),
    sa.Column("finished", sa.Float, nullable=True),
    sa.Column("heartbeat", sa.Float, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("token", sa.String(32), nullable=True),  # the current attempt's; compare-and-set key
    sa.Column("worker", sa.String(200), nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("expires", sa.Float, nullable=True),
    sa.Column("enqueued", sa.Float, nullable=True),  # queue mode: when a message for it was last sent
    sa.Column("published", sa.String(32), nullable=True),  # the token of the attempt whose results are served
    sa.Column(
        "result", sa.JSON(none_as_null=True), nullable=True
    ),  # the published run's summary: pixel sizes, level, ROI share
    # a sharded job's plan (tileseg.engine.shards.plan.ShardPlan as JSON): its shards are rows of `shards`
    sa.Column("plan", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("batch_id", sa.String(36), nullable=True),  # the batch it was submitted in (POST /batches)
    # where its callbacks go, by the job status that sends them ({"succeeded": url, "failed": url, ...})
    sa.Column("callback", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("notified", sa.String(16), nullable=True),  # the last status whose callbacks are in the outbox
    sa.Index("ix_jobs_status_created", "status", "created"),
    sa.Index("ix_jobs_owner_created", "owner", "created"),
    sa.Index("ix_jobs_batch_created", "batch_id", "created"),
)


class ShardStatus(str, enum.Enum):
    """Where a shard is: queued -> running -> done | failed; queued or running -> canceled (its job ended)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


# One row per shard of a sharded job (tileseg.jobs.shards.store): leased, beaten and reaped as jobs are.
shards = sa.Table(
    "shards",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),  # 0 = the top band
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("tiles_done", sa.Integer, nullable=False, default=0),
    sa.Column("tiles_total", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("started", sa.Float, nullable=True),
    sa.Column("finished", sa.Float, nullable=True),
    sa.Column("heartbeat", sa.Float, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("token", sa.String(32), nullable=True),  # the current attempt's; compare-and-set key
    sa.Column("worker", sa.String(200), nullable=True),
    sa.Column("enqueued", sa.Float, nullable=True),
    sa.Column("published", sa.String(32), nullable=True),  # the token of the attempt whose shard files count
    sa.Column("result", sa.JSON(none_as_null=True), nullable=True),  # the finished shard's rows and counts
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Index("ix_shards_status", "status"),
)
# A batch of jobs (POST /batches): its jobs are ordinary rows of `jobs`, with its id in `batch_id`.
batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),  # its jobs
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("callback", sa.Text, nullable=True),  # posted once when every job has ended
    sa.Column("notified", sa.Float, nullable=True),  # when that callback went into the outbox
    sa.Index("ix_batches_owner_created", "owner", "created"),
)


class DeliveryStatus(str, enum.Enum):
    """Where a callback delivery is: pending (retried until delivered or its time is up) -> delivered | abandoned."""

    PENDING = "pending"
    DELIVERED = "delivered"
    ABANDONED = "abandoned"


# The callbacks' outbox (tileseg.jobs.outbox): one row per delivery, its body fixed when it is queued, kept until
# it is delivered or given up, so that a restart of the server loses none.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),  # the delivery id (X-Tileseg-Delivery)
    sa.Column("job_id", sa.String(36), nullable=True),
    sa.Column("batch_id", sa.String(36), nullable=True),
    sa.Column("event", sa.String(16), nullable=False),  # the job status that sent it, or `finished` (a batch)
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # the exact JSON posted (and signed), UTF-8
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("due", sa.Float, nullable=False),  # the next attempt's time
    sa.Column("held_until", sa.Float, nullable=True),  # a sender's claim on it, while it sends
    sa.Column("finished", sa.Float, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Index("ix_deliveries_status_due", "status", "due"),
)
health = sa.Table("health", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("at", sa.Float))


@dataclass(frozen=True)
class Job:
    """One row of the job table."""

    id: str
    owner: str | None
    status: JobStatus
    model: str
    options: dict[str, Any]
    input: dict[str, Any]
    input_path: str
    input_owned: bool
    created: float
    tiles_done: int = 0
    tiles_total: int = 0
    started: float | None = None
    finished: float | None = None
    heartbeat: float | None = None
    attempts: int = 0
    token: str | None = None
    worker: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    expires: float | None = None
    enqueued: float | None = None
    published: str | None = None
    result: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    batch_id: str | None = None
    callback: dict[str, str] | None = None
    notified: str | None = None
    read_at: float | None = None  # not a column: the database's clock when the row was read
    shards: dict[str, int] | None = None  # not a column: a sharded job's shards counted (total, queued, ...)

    @classmethod
    def from_row(cls, row: sa.Row) -> Job:
        data = dict(row._mapping)
        data["status"] = JobStatus(data["status"])
        counts = {key: int(data.pop(f"shards_{key}", 0) or 0) for key in SHARD_COUNTS}
        tiles = data.pop("shards_tiles", None)
        if data.get("plan") is not None:  # a sharded job's progress is its shards'
            data["shards"] = counts
            data["tiles_done"] = int(tiles or 0)
        return cls(**data)


SHARD_COUNTS = ("total", "queued", "running", "done")  # what GET /jobs/{id} shows of a sharded job's shards


def clock(engine: Engine) -> sa.ColumnElement:
    """The database's own clock in seconds since the epoch, as a SQL expression: every time in the table
    written and judged on one clock, whichever machine writes or judges it."""
    if engine.dialect.name == "postgresql":
        # clock_timestamp, not now(): the time of the statement, not of its transaction's start
        return sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Float)
    # SQLite runs in this process, on the one machine that holds its file: its clock is this process's.
    # Read here rather than with julianday('now'), which reads the same clock to the millisecond only:
    # jobs made within one millisecond would tie on `created`, and the queue's order with them.
    return sa.bindparam("now", callable_=time.time, type_=sa.Float)


def create_tables(engine: Engine) -> None:
    """Create the tables, and add the columns that a table made by an older version lacks.

    Many processes start at once against one PostgreSQL database (the API and every worker): there the
    check-then-create runs under a transaction-wide advisory lock, as two concurrent CREATE TABLEs collide.
    """
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7340301)"))  # any number, fixed for tileseg
        metadata.create_all(conn)  # the shards table too, for a table made by an older version
        present = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
        for column in jobs.columns:
            if column.name not in present and column.nullable:
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(sa.text(f'ALTER TABLE jobs ADD COLUMN "{column.name}" {kind}'))
        for index in jobs.indexes:  # an index of a column just added (create_all makes those of new tables only)
            index.create(conn, checkfirst=True)


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine for ``url``; on SQLite, one that waits for the writer rather than failing (WAL)."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        # WAL: readers never wait for the writer; NORMAL is durable across process crashes in WAL mode
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


__all__ = [
    "SHARD_COUNTS",
    "DeliveryStatus",
    "batches",
    "deliveries",
    "Job",
    "JobStatus",
    "ShardStatus",
    "shards",
    "clock",
    "create_tables",
    "health",
    "jobs",
    "make_engine",
    "metadata",
]
