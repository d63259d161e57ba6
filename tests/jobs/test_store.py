"""The job table: atomic claims, compare-and-set on the attempt token, recovery after a crash, leases that
run out, expiry, owners. Every test runs on SQLite and on a real PostgreSQL (the same code, another URL)."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from tileseg.jobs.errors import JobNotFoundError
from tileseg.jobs.store import ANY_OWNER, JobStatus, JobStore, new_job_id
from tileseg.jobs.table import jobs


@pytest.fixture(scope="module")
def postgres_url(postgres) -> str:
    return postgres.create_database("tileseg_store")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.system)])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    table = JobStore(url)
    with table.engine.begin() as conn:
        conn.execute(jobs.delete())  # one PostgreSQL database for the module: each test starts empty
    yield table
    table.close()


def add(store: JobStore, owner: str | None = None) -> str:
    job_id = new_job_id()
    store.create(
        id=job_id,
        owner=owner,
        model="m",
        options={},
        input={"width": 1, "height": 1},
        input_path="/nowhere",
        input_owned=False,
    )
    return job_id


def test_claims_are_atomic(store):
    ids = {add(store) for _ in range(30)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while (job := store.claim(f"w{n}")) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids), "every job claimed once, none twice"
    assert all(store.get(i).status is JobStatus.RUNNING and store.get(i).attempts == 1 for i in ids)


def test_the_oldest_job_is_claimed_first(store):
    first, second = add(store), add(store)
    assert store.claim("w").id == first
    assert store.claim("w").id == second
    assert store.claim("w") is None


def test_a_canceled_attempt_can_no_longer_write(store):
    job = store.get(add(store))
    running = store.claim("w")
    assert store.progress(job.id, running.token, 1, 4)
    store.cancel(job.id)
    assert not store.progress(job.id, running.token, 2, 4)
    assert not store.finish(job.id, running.token, JobStatus.SUCCEEDED)
    assert store.get(job.id).status is JobStatus.CANCELED


def test_recovery_requeues_then_gives_up(store):
    job_id = add(store)
    store.claim("w")
    assert store.recover(stale_before=float("inf"), max_attempts=2) == ([job_id], [])
    again = store.claim("w")
    assert again.attempts == 2 and again.status is JobStatus.RUNNING
    assert store.recover(stale_before=float("inf"), max_attempts=2) == ([], [job_id])
    failed = store.get(job_id)
    assert failed.status is JobStatus.FAILED and failed.error_code == "too_many_attempts"
    assert "2 time(s)" in failed.error_message


def test_recovery_leaves_jobs_with_a_fresh_heartbeat(store):
    job_id = add(store)
    store.claim("w")
    assert store.recover(stale_before=time.time() - 60, max_attempts=3) == ([], [])
    assert store.get(job_id).status is JobStatus.RUNNING


def test_release_does_not_count_the_attempt(store):
    job_id = add(store)
    running = store.claim("w")
    assert store.release(job_id, running.token)
    back = store.get(job_id)
    assert back.status is JobStatus.QUEUED and back.attempts == 0 and back.token is None


def test_results_expire(store):
    job_id = add(store)
    running = store.claim("w")
    assert store.finish(job_id, running.token, JobStatus.SUCCEEDED, ttl=100)
    assert store.expire() == []
    expired = store.expire(now=time.time() + 101)
    assert [j.id for j in expired] == [job_id] and store.get(job_id).status is JobStatus.EXPIRED


def test_owners_see_their_own_jobs(store):
    mine, theirs = add(store, "alice"), add(store, "bob")
    assert store.get(mine, "alice").id == mine
    with pytest.raises(JobNotFoundError):
        store.get(theirs, "alice")
    with pytest.raises(JobNotFoundError):
        store.cancel(theirs, "alice")
    assert [j.id for j in store.list("alice")] == [mine]
    assert {j.id for j in store.list(ANY_OWNER)} == {mine, theirs}
    assert store.count_by_status()[JobStatus.QUEUED] == 2


def test_a_lease_runs_out_without_heartbeats(store):
    job_id = add(store)
    running = store.claim("w")
    assert store.reap(lease=30, max_attempts=3) == ([], []), "a fresh heartbeat holds the lease"
    # margins of a second: a loaded CI machine may take a few hundred milliseconds between two statements
    time.sleep(1.5)
    assert store.renew(job_id, running.token)
    assert store.reap(lease=1.2, max_attempts=3) == ([], []), "the renewal moved the heartbeat"
    time.sleep(1.3)
    assert store.reap(lease=1.2, max_attempts=3) == ([job_id], [])
    back = store.get(job_id)
    assert back.status is JobStatus.QUEUED and back.token is None and back.attempts == 1


def test_only_the_attempt_that_holds_the_job_publishes(store):
    job_id = add(store)
    first = store.claim("w1")
    time.sleep(0.05)
    assert store.reap(lease=0.01, max_attempts=3) == ([job_id], [])  # w1 looks dead
    second = store.claim("w2", job_id)
    assert second.attempts == 2 and second.token != first.token
    # the first attempt, alive after all, has lost the job: it can no longer beat, report or publish
    assert not store.renew(job_id, first.token)
    assert not store.progress(job_id, first.token, 3, 4)
    assert not store.finish(job_id, first.token, JobStatus.SUCCEEDED)
    assert store.finish(job_id, second.token, JobStatus.SUCCEEDED)
    done = store.get(job_id)
    assert done.status is JobStatus.SUCCEEDED and done.published == second.token and done.worker == "w2"
    assert store.claim("w1", job_id) is None, "a finished job cannot be claimed again"


def test_a_success_keeps_its_run_summary_and_a_failure_none(store):
    summary = {"pixel_size": {"level": 1, "why": "µm ≠ nm", "grid": [3, 4]}, "roi": None, "warnings": []}
    done, failed = add(store), add(store)
    assert store.get(done).result is None
    attempt = store.claim("w", done)
    assert not store.finish(done, "not-the-token", JobStatus.SUCCEEDED, result=summary)
    assert store.get(done).result is None, "only the attempt holding the job writes its summary"
    assert store.finish(done, attempt.token, JobStatus.SUCCEEDED, result=summary)
    assert store.get(done).result == summary
    attempt = store.claim("w", failed)
    assert store.finish(failed, attempt.token, JobStatus.FAILED, error=("x", "y"), result=summary)
    assert store.get(failed).result is None
    with store.engine.connect() as conn:  # SQL NULL, not the JSON text 'null'
        assert conn.execute(sa.select(jobs.c.id).where(jobs.c.result.is_(None))).scalars().all() == [failed]


def test_unclaimed_jobs_are_those_not_sent_lately(store):
    old, fresh = add(store), add(store)
    store.enqueued([fresh])
    time.sleep(0.3)
    assert store.unclaimed(older_than=0.2) == [old, fresh]
    store.enqueued([old])
    assert store.unclaimed(older_than=0.2) == [fresh]
    store.claim("w", fresh)
    assert store.unclaimed(older_than=0) == [old]


def test_a_table_of_an_older_version_gets_the_new_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE jobs (id VARCHAR(36) PRIMARY KEY, owner VARCHAR(64), status VARCHAR(16) "
                "NOT NULL, model VARCHAR(200) NOT NULL, options JSON NOT NULL, input JSON NOT NULL, "
                "input_path TEXT NOT NULL, input_owned BOOLEAN NOT NULL, tiles_done INTEGER NOT NULL, "
                "tiles_total INTEGER NOT NULL, created FLOAT NOT NULL, started FLOAT, finished FLOAT, "
                "heartbeat FLOAT, attempts INTEGER NOT NULL, token VARCHAR(32), worker VARCHAR(200), "
                "error_code VARCHAR(64), error_message TEXT, expires FLOAT)"
            )
        )
    engine.dispose()
    store = JobStore(url)
    job_id = add(store)
    assert store.get(job_id).published is None and store.unclaimed(older_than=-1) == [job_id]
    assert store.get(job_id).result is None
    attempt = store.claim("w", job_id)
    assert store.finish(job_id, attempt.token, JobStatus.SUCCEEDED, result={"tiles_total": 4})
    assert store.get(job_id).result == {"tiles_total": 4}
    store.close()
