"""Scale-out with real parts: the API in queue mode, Celery workers, Redis, PostgreSQL, all on loopback.

* Two workers run eight jobs on real images; one is SIGKILLed in the middle of a job. Every job still
  succeeds, with a result equal to the command line's, none lost, none published twice.
* SIGTERM on a worker: past its grace period the job goes back to the queue; within it the job finishes;
  either way the worker takes no other job and exits, and nothing is lost.
* Redis restarted empty while jobs wait in it: the jobs still run (the job table sends them again).

The ``slow`` test model sleeps 0.1 s a batch (its mask is the input, shifted): a job on a 512 x 512 ISBI
image takes about 6 s at tile 32 and 1.6 s at tile 64, long enough to kill or stop a worker under it, and
without using the CPU.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.api.conftest import submit, wait_for
from tests.scale.conftest import PUBLISHED, cli_mask, mask_of, wait_running
from tileseg.jobs.store import JobStatus

pytestmark = pytest.mark.slow


def isbi(data_dir: Path, n: int) -> Path:
    return data_dir / "isbi2012" / "test" / "images" / f"{n}.png"


def check_results(scale, client, weights, tmp_path, jobs: dict[str, tuple[str, Path, dict]]) -> None:
    """Every job succeeded once, published by one attempt, with the command line's mask."""
    for job_id, (model, source, options) in jobs.items():
        job = wait_for(client, job_id, timeout=180)
        assert job["status"] == "succeeded", job
        assert scale.publications(job_id) == 1, f"job {job_id} published {scale.publications(job_id)} times"
        served = mask_of(client, job, tmp_path / f"{job_id}.served.tif")
        expected = cli_mask(weights, source, tmp_path / f"{job_id}.cli.tif", model, **options)
        np.testing.assert_array_equal(served, expected, err_msg=f"job {job_id}: {model} on {source.name}")


def test_a_worker_killed_mid_job_loses_nothing(scale, weights, data_dir, tmp_path):
    workers = scale.start_workers(2)
    cases = [  # the slow ones first: each worker starts with one, and one of those is killed
        ("slow", isbi(data_dir, 0), {"tile": 32}),
        ("slow", isbi(data_dir, 1), {"tile": 32}),
        ("rgb-test", data_dir / "geotiff" / "rgb-byte-tenth.tif", {}),
        ("grey-test", isbi(data_dir, 2), {}),
        ("grey-test", isbi(data_dir, 3), {"tile": 64}),
        ("nested", isbi(data_dir, 4), {}),
        ("nested", isbi(data_dir, 5), {"prune": 1}),
        ("slow", isbi(data_dir, 6), {"tile": 64}),
    ]
    jobs = {}
    with scale.api.client() as client:
        for model, source, options in cases:
            response = submit(client, source, model=model, **options)
            assert response.status_code == 202, response.text
            jobs[response.json()["id"]] = (model, source, options)
        first = next(iter(jobs))
        victim_job = wait_running(scale, first, tiles=1)
        victim = scale.worker_of(first)
        killed_at = time.monotonic()
        victim.signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        survivor = next(w for w in workers if w is not victim)

        # sent again within the lease (3 s) and a reaper pass (0.5 s), not the broker's hour; then it starts again
        # when the survivor reaches it in the queue (after the jobs sent before it, each model's first measuring)
        sent_again = False
        while (restarted := scale.store_read(first)).attempts < 2:
            sent_again |= (restarted.enqueued or 0) > (victim_job.enqueued or victim_job.created)
            assert sent_again or time.monotonic() - killed_at < 30, f"killed worker's job not sent again: {restarted}"
            assert time.monotonic() - killed_at < 180, f"the killed worker's job did not start again: {restarted}"
            time.sleep(0.05)
        assert restarted.token != victim_job.token and restarted.worker != victim_job.worker
        check_results(scale, client, weights, tmp_path, jobs)

    store = scale.store()
    rows = {job_id: store.get(job_id) for job_id in jobs}
    store.close()
    assert rows[first].attempts == 2 and rows[first].published not in (None, victim_job.token)
    assert all(row.attempts == 1 for job_id, row in rows.items() if job_id != first)
    assert survivor.process.poll() is None, "the other worker carried on"
    assert not (scale.data / "jobs" / first / "attempts" / victim_job.token / "mask.tif").exists()


def test_sigterm_hands_back_or_finishes_the_job_and_loses_nothing(scale, weights, data_dir, tmp_path):
    cases = [("slow", isbi(data_dir, 7), {"tile": 32}), ("slow", isbi(data_dir, 8), {"tile": 64})]
    (impatient,) = scale.start_workers(1, shutdown_grace=0.5)
    jobs = {}
    with scale.api.client() as client:
        for model, source, options in cases:
            jobs[submit(client, source, model=model, **options).json()["id"]] = (model, source, options)
        first, second = jobs
        wait_running(scale, first, tiles=1)

        # past the grace period: the job goes back to the queue, its attempt not counted
        impatient.signal(signal.SIGTERM)
        assert impatient.wait(30) == 0, impatient.text()[-3000:]
        back = scale.store_read(first)
        assert back.status is JobStatus.QUEUED and back.attempts == 0 and back.token is None
        assert scale.store_read(second).attempts == 0, "a stopping worker takes no other job"

        # within the grace period: the job finishes, the worker takes no other and exits
        (patient,) = scale.start_workers(1, shutdown_grace=60)
        deadline = time.monotonic() + 60
        while not (
            running := [
                j
                for j in jobs
                if scale.store_read(j).status is JobStatus.RUNNING and scale.store_read(j).tiles_done >= 1
            ]
        ):
            assert time.monotonic() < deadline, "the second worker took no job"
            time.sleep(0.05)
        (taken,) = running
        other = second if taken == first else first
        patient.signal(signal.SIGTERM)
        scale.start_workers(1)  # another worker for the job the stopping one leaves alone
        assert patient.wait(60) == 0, patient.text()[-3000:]
        assert scale.store_read(taken).status is JobStatus.SUCCEEDED
        assert f"job {other} {PUBLISHED}" not in patient.text(), "nothing taken after SIGTERM"
        check_results(scale, client, weights, tmp_path, jobs)
    assert all(scale.store_read(j).attempts == 1 for j in jobs), "a handed-back attempt is not counted"


def test_jobs_queued_in_a_broker_restarted_empty_still_run(scale, weights, data_dir, tmp_path):
    scale.start_workers(1)
    cases = [
        ("slow", isbi(data_dir, 9), {"tile": 32}),
        ("slow", isbi(data_dir, 10), {"tile": 64}),
        ("slow", isbi(data_dir, 11), {"tile": 64}),
    ]
    jobs = {}
    with scale.api.client() as client:
        for model, source, options in cases:
            jobs[submit(client, source, model=model, **options).json()["id"]] = (model, source, options)
        wait_running(scale, next(iter(jobs)), tiles=1)
        redis = scale.redis.client()
        assert redis.llen("tileseg") == 2, "two jobs wait in the broker"
        before = redis.info("server")["run_id"]
        scale.redis.restart()
        # a new server, its queue lost: whatever it holds now, the reaper sent again (its log line is checked
        # below); counting the queue here would race the reaper, which looks every half second
        assert scale.redis.client().info("server")["run_id"] != before, "the broker was restarted"
        check_results(scale, client, weights, tmp_path, jobs)
    logs = "".join(p.read_text(errors="replace") for p in scale.logs.glob("*.log"))
    assert "had no message in the broker; sent again" in logs
