"""The job function's lease and publication: a heartbeat holds the lease while the job runs, an attempt that
lost its job publishes nothing and leaves the job's files alone, and results committed in the table but not
yet renamed into place (the worker died between the two) are moved there by whoever looks next."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rasterio

from tests.engine import nets
from tileseg.jobs.files import JobFiles
from tileseg.jobs.intake import JobOptions
from tileseg.jobs.runner import Heartbeat, RunConfig, run_job
from tileseg.jobs.store import JobStatus, JobStore, new_job_id
from tileseg.jobs.sweeper import sweep


@pytest.fixture
def model(tmp_path):
    nets.register()
    yield nets.checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb-test")
    nets.unregister()


@pytest.fixture
def store(tmp_path):
    table = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield table
    table.close()


def add(store: JobStore, data_dir, tmp_path) -> str:
    """A job on a copy of a small real image, owned by the job (as an upload is)."""
    job_id = new_job_id()
    files = JobFiles.of(tmp_path, job_id)
    files.root.mkdir(parents=True)
    files.upload.write_bytes((data_dir / "geotiff" / "rgb-byte-tenth.tif").read_bytes())
    store.create(
        id=job_id,
        owner=None,
        model="rgb-test",
        options=JobOptions().to_record(),
        input={"width": 79, "height": 71},
        input_path=str(files.upload),
        input_owned=True,
    )
    return job_id


def test_the_heartbeat_holds_the_lease_until_it_stops(store, data_dir, tmp_path):
    job_id = add(store, data_dir, tmp_path)
    job = store.claim("w")
    beat = Heartbeat(store, job, interval=0.05).start()
    time.sleep(0.4)
    assert store.reap(lease=0.25, max_attempts=3) == ([], [])
    beat.stop()
    time.sleep(0.4)
    assert store.reap(lease=0.25, max_attempts=3) == ([job_id], [])
    again = store.claim("w2", job_id)
    stale = Heartbeat(store, job, interval=0.02).start()  # the first attempt's token, which lost the job
    deadline = time.monotonic() + 5
    while not stale.lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stale.lost and store.get(job_id).token == again.token
    stale.stop()


def test_a_job_is_published_by_the_attempt_that_holds_it(store, model, data_dir, tmp_path):
    job_id = add(store, data_dir, tmp_path)
    job = store.claim("w")
    outcome = run_job(
        store, job, lambda name, prune: model, RunConfig(data_dir=tmp_path, result_ttl=60, heartbeat=0.05)
    )
    assert outcome.status == "succeeded"
    done, files = store.get(job_id), JobFiles.of(tmp_path, job_id)
    assert done.status is JobStatus.SUCCEEDED and done.published == job.token
    assert files.mask.is_file() and files.preview.is_file()
    assert not files.attempts.exists(), "the attempt's own folder is gone once its files are in place"
    assert not files.upload.exists(), "the upload is dropped when its job ends"


def test_an_attempt_that_lost_its_job_publishes_nothing_and_touches_nothing(store, model, data_dir, tmp_path):
    job_id = add(store, data_dir, tmp_path)
    first = store.claim("w1")
    later = {}

    def load(name, prune):
        # while the first attempt starts, its lease runs out and another worker takes the job
        time.sleep(0.05)
        store.reap(lease=0.01, max_attempts=3)
        later["job"] = store.claim("w2", job_id)
        return model

    outcome = run_job(store, first, load, RunConfig(data_dir=tmp_path, result_ttl=60))
    assert outcome.status == "lost"
    now, files = store.get(job_id), JobFiles.of(tmp_path, job_id)
    assert now.status is JobStatus.RUNNING and now.token == later["job"].token, "the job is the second's"
    assert files.upload.is_file(), "the input stays for the attempt that holds the job"
    assert not files.mask.exists() and not files.attempt(first.token).root.exists()
    assert (
        run_job(store, later["job"], lambda name, prune: model, RunConfig(data_dir=tmp_path, result_ttl=60)).status
        == "succeeded"
    )
    assert store.get(job_id).published == later["job"].token and files.mask.is_file()


def test_results_committed_but_not_renamed_are_moved_into_place(store, model, data_dir, tmp_path):
    job_id = add(store, data_dir, tmp_path)
    job = store.claim("w")
    run_job(store, job, lambda name, prune: model, RunConfig(data_dir=tmp_path, result_ttl=60))
    files = JobFiles.of(tmp_path, job_id)
    with rasterio.open(files.mask) as src:
        expected = src.read()
    # as if the worker had died after the table's commit and before its renames
    attempt = files.attempt(store.get(job_id).published)
    attempt.root.mkdir(parents=True)
    for path in (files.mask, files.preview):
        path.rename(attempt.root / path.name)
    sweep(store, tmp_path)
    with rasterio.open(files.mask) as src:
        np.testing.assert_array_equal(src.read(), expected)
    assert files.preview.is_file() and not files.attempts.exists()
