"""The job function and the worker: an unexpected error fails that job with a reason, and the worker
carries on with the next; bad input fails a job with the engine's error."""

from __future__ import annotations

import time

import pytest

from tests.engine import nets
from tileseg.jobs.intake import JobOptions
from tileseg.jobs.runner import RunConfig
from tileseg.jobs.store import JobStatus, JobStore, new_job_id
from tileseg.jobs.worker import Worker


@pytest.fixture
def model(tmp_path):
    nets.register()
    yield nets.checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb-test")
    nets.unregister()


def test_an_unexpected_error_fails_one_job_and_the_worker_goes_on(tmp_path, data_dir, model):
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    image = data_dir / "geotiff" / "rgb-byte-tenth.tif"
    grey = data_dir / "geotiff" / "shade.tif"

    def load(name, prune):
        if name == "boom":
            raise RuntimeError("a bug in one job")
        return model

    ids = {}
    cases = (("boom", image, (79, 71)), ("rgb-test", grey, (1024, 1024)), ("rgb-test", image, (79, 71)))
    for name, path, size in cases:
        job_id = new_job_id()
        store.create(
            id=job_id,
            owner=None,
            model=name,
            options=JobOptions().to_record(),
            input={"width": size[0], "height": size[1]},
            input_path=str(path),
            input_owned=False,
        )
        ids[job_id] = (name, path)
        time.sleep(0.01)  # claimed in this order
    outcomes = []
    worker = Worker(store, load, RunConfig(data_dir=tmp_path, result_ttl=60), on_outcome=outcomes.append, poll=0.05)
    worker.start()
    deadline = time.monotonic() + 60
    while len(outcomes) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.stop(5)
    boom, bands, good = (store.get(i) for i in ids)
    assert boom.status is JobStatus.FAILED and boom.error_code == "internal_error"
    assert "RuntimeError: a bug in one job" in boom.error_message
    assert bands.status is JobStatus.FAILED and bands.error_code == "band_mismatch"
    assert good.status is JobStatus.SUCCEEDED and (tmp_path / "jobs" / good.id / "mask.tif").is_file()
    assert [o.status for o in outcomes] == ["failed", "failed", "succeeded"]
    store.close()
