"""The shards of sharded jobs in the job table: planned with their job in one transaction, claimed, beaten,
reaped and failed by compare-and-set, and exactly one last shard to finish, however many end at once. Every
test runs on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from tileseg.jobs.shards.store import ShardStore
from tileseg.jobs.store import JobStatus, JobStore, new_job_id
from tileseg.jobs.table import ShardStatus, jobs, shards

PLAN = {"bands": [[0, 1]], "cols": 1, "runtime": {}}  # the store keeps the plan as it is given


@pytest.fixture(scope="module")
def postgres_url(postgres) -> str:
    return postgres.create_database("tileseg_shardstore")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.system)])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    table = JobStore(url)
    with table.engine.begin() as conn:
        conn.execute(jobs.delete())
        conn.execute(shards.delete())
    yield table
    table.close()


def planned(store: JobStore, count: int, tiles: int = 10):
    """A running job planned in ``count`` shards: (its claimed row, the shard store)."""
    job_id = new_job_id()
    store.create(
        id=job_id,
        owner=None,
        model="m",
        options={},
        input={"width": 1, "height": 1},
        input_path="/nowhere",
        input_owned=False,
    )
    job = store.claim("planner", job_id)
    table = ShardStore(store)
    assert table.plan(job.id, job.token, PLAN, [tiles] * count)
    return store.get(job.id), table


def test_a_plan_queues_its_shards_with_the_job_only_for_the_attempt_that_holds_it(store):
    job, table = planned(store, 3)
    assert job.status is JobStatus.RUNNING and job.plan == PLAN and job.tiles_total == 30
    assert job.shards == {"total": 3, "queued": 3, "running": 0, "done": 0}
    assert [s.status for s in table.list(job.id)] == [ShardStatus.QUEUED] * 3
    assert not table.plan(job.id, "0" * 32, PLAN, [1, 1])  # not the attempt's: nothing written
    assert len(table.list(job.id)) == 3


def test_claims_progress_and_the_one_last_shard(store):
    job, table = planned(store, 6)
    claimed = [table.claim(f"w{n}", job.id, n) for n in range(6)]
    assert all(s is not None and s.attempts == 1 for s in claimed)
    assert table.claim("again", job.id, 0) is None  # taken
    assert table.progress(claimed[0], 4)
    assert store.get(job.id).tiles_done == 4 and store.get(job.id).shards["running"] == 6
    assert sorted(finish_at_once(table, claimed)) == [False] * 5 + [True]
    after = store.get(job.id)
    assert after.shards == {"total": 6, "queued": 0, "running": 0, "done": 6} and after.tiles_done == 60
    assert after.status is JobStatus.RUNNING and after.token == job.token  # the assembly ends the job
    assert not table.progress(claimed[0], 5)  # done: no attempt holds it any more


def test_exactly_one_shard_is_the_last_however_they_end_together(store):
    for _ in range(20):  # the interleavings differ from round to round
        job, table = planned(store, 6)
        claimed = [table.claim(f"w{n}", job.id, n) for n in range(6)]
        assert sorted(finish_at_once(table, claimed)) == [False] * 5 + [True]


def finish_at_once(table: ShardStore, claimed) -> list[bool]:
    """End every claimed shard from a thread of its own, all released at once; whether each was the last."""
    lasts: list[bool] = []
    barrier = threading.Barrier(len(claimed))

    def finish(shard) -> None:
        barrier.wait()
        ended, last = table.finish(shard, {"rows": shard.number}, f"w{shard.number}")
        assert ended
        lasts.append(last)

    threads = [threading.Thread(target=finish, args=(s,)) for s in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lasts


def test_cancel_stops_every_shard_and_no_shard_is_claimed_after(store):
    job, table = planned(store, 3)
    running = table.claim("w", job.id, 0)
    store.cancel(job.id)
    assert not table.progress(running, 1) and not table.renew(running)
    assert table.claim("w", job.id, 1) is None
    assert [s.status for s in table.list(job.id)] == [ShardStatus.CANCELED] * 3
    assert table.unclaimed(-1) == [] and table.queued() == 0


def test_a_failing_shard_fails_its_job_with_its_reason(store):
    job, table = planned(store, 3)
    first, second = table.claim("a", job.id, 0), table.claim("b", job.id, 1)
    assert table.fail(second, "unreadable_input", "shard 2 of 3 failed: corrupt")
    failed = store.get(job.id)
    assert failed.status is JobStatus.FAILED and failed.error_code == "unreadable_input"
    assert failed.error_message == "shard 2 of 3 failed: corrupt"
    assert not table.progress(first, 1)  # the other shards stop at their next report
    assert table.finish(first, {}, "a") == (False, False)
    assert [s.status for s in table.list(job.id)] == [ShardStatus.CANCELED, ShardStatus.FAILED, ShardStatus.CANCELED]


def test_a_dead_workers_shard_is_queued_again_and_fails_the_job_past_its_attempts(store):
    job, table = planned(store, 2)
    other = table.claim("alive", job.id, 1)
    dead = table.claim("dead", job.id, 0)
    time.sleep(0.3)
    assert table.renew(other)
    requeued, failed = table.reap(lease=0.2, max_attempts=2)
    assert [s.number for s in requeued] == [0] and failed == []
    assert store.reap(0.2, 3) == ([], [])  # the job lives in its shards: the job's own reaper leaves it be
    assert not table.progress(dead, 1)  # the dead attempt's token no longer holds the shard
    again = table.claim("new", job.id, 0)
    assert again.attempts == 2 and again.token != dead.token
    time.sleep(0.3)
    assert table.renew(other)
    requeued, failed = table.reap(lease=0.2, max_attempts=2)
    assert requeued == [] and [s.number for s in failed] == [0]
    ended = store.get(job.id)
    assert ended.status is JobStatus.FAILED and ended.error_code == "too_many_attempts"
    assert "shard 1" in ended.error_message


def test_the_jobs_lease_counts_again_once_every_shard_is_done(store):
    job, table = planned(store, 1)
    shard = table.claim("w", job.id, 0)
    assert table.finish(shard, {}, "assembler") == (True, True)
    assert store.get(job.id).worker == "assembler"
    time.sleep(0.3)
    assert store.reap(0.2, 3) == ([job.id], [])  # its assembler died: the job is queued again
    back = store.get(job.id)
    assert back.status is JobStatus.QUEUED and back.plan == PLAN  # to be assembled from the same shards
