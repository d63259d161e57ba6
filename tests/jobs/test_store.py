"""The job table: atomic claims, compare-and-set on the attempt token, recovery after a crash, expiry,
owners."""

from __future__ import annotations

import threading
import time

import pytest

from service.errors import JobNotFoundError
from service.jobs.store import ANY_OWNER, JobStatus, JobStore, new_job_id


@pytest.fixture
def store(tmp_path):
    jobs = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield jobs
    jobs.close()


def add(store: JobStore, owner: str | None = None) -> str:
    job_id = new_job_id()
    store.create(id=job_id, owner=owner, model="m", options={}, input={"width": 1, "height": 1},
                 input_path="/nowhere", input_owned=False)
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
    assert store.finish(job_id, running.token, JobStatus.SUCCEEDED, expires=time.time() + 100)
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
