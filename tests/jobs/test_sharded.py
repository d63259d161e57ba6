"""Sharded jobs, in this process on SQLite: the plan, the shards and the assembly as the queue workers call
them (:mod:`tileseg.jobs.shards.run`). A worker that dies between the last shard's end and the publication
loses nothing: the job is reaped, claimed again and assembled from the same shard files. An attempt at a
shard that lost its lease neither counts nor leaves files. (With real workers, Redis and PostgreSQL:
``tests/scale/test_shards.py``.)"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import rasterio

from tests.engine import nets
from tileseg.engine import segment
from tileseg.engine.options import SegmentOptions
from tileseg.engine.shards.plan import ShardPlan, run_planned_shard
from tileseg.jobs.files import JobFiles
from tileseg.jobs.intake import JobOptions
from tileseg.jobs.runner import RunConfig, RunStatus
from tileseg.jobs.shards import files as shardfiles
from tileseg.jobs.shards.run import ShardCount, assemble_job, plan_job, run_shard_job, shard_count
from tileseg.jobs.shards.store import ShardStore
from tileseg.jobs.store import JobStatus, JobStore, new_job_id

FIXED = {"tile": 16, "precision": "fp32", "runtime": "torch"}


@pytest.fixture
def model(tmp_path):
    nets.register()
    yield nets.checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb-test")
    nets.unregister()


@pytest.fixture
def stores(tmp_path):
    table = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield table, ShardStore(table)
    table.close()


def planned(stores, model, data_dir, tmp_path, config, count=3):
    """A job on a small real image (71 rows: 5 tile rows of 16, the last one short), planned in shards."""
    store, shards = stores
    job_id = new_job_id()
    files = JobFiles.of(tmp_path, job_id)
    files.root.mkdir(parents=True)
    files.upload.write_bytes((data_dir / "geotiff" / "rgb-byte-tenth.tif").read_bytes())
    options = JobOptions(shards=count, vectors=True, **FIXED)
    store.create(
        id=job_id,
        owner=None,
        model="rgb-test",
        options=options.to_record(),
        input={"width": 79, "height": 71},
        input_path=str(files.upload),
        input_owned=True,
    )
    sent: list[int] = []
    job = store.claim("planner", job_id)
    outcome = plan_job(
        stores,
        job,
        lambda n, p: model,
        config,
        lambda: False,
        ShardCount(count, automatic=False),
        lambda j, n: sent.extend(n),
    )
    assert outcome is not None and outcome.status is RunStatus.PLANNED and sent == list(range(count))
    return store.get(job_id), files


def test_a_dead_assembler_loses_nothing(stores, model, data_dir, tmp_path):
    store, shards = stores
    config = RunConfig(data_dir=tmp_path, result_ttl=60, heartbeat=0.05)
    job, files = planned(stores, model, data_dir, tmp_path, config)
    load = lambda n, p: model  # noqa: E731
    for number in (0, 1):
        outcome = run_shard_job(stores, shards.claim("w", job.id, number), load, config, lambda: False, "w")
        assert outcome.status is RunStatus.SHARD_DONE
    # the last shard's worker ends its shard, then dies before it assembles: no heartbeat on the job
    last = shards.claim("doomed", job.id, 2)
    plan = ShardPlan.from_record(job.plan)
    folder = shardfiles.make_attempt_folder(files, 2, last.token)
    result = run_planned_shard(model, job.input_path, plan, 2, folder, JobOptions(**job.options).segment_options())
    assert shards.finish(last, shardfiles.result_record(result), "doomed") == (True, True)
    time.sleep(0.3)
    assert store.reap(lease=0.2, max_attempts=3) == ([job.id], [])
    again = store.claim("rescuer", job.id)
    assert again.plan == job.plan and again.attempts == 2
    outcome = assemble_job(stores, again, load, config, lambda: False)
    assert outcome.status is RunStatus.SUCCEEDED
    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.published == again.token
    assert done.shards == {"total": 3, "queued": 0, "running": 0, "done": 3}
    assert not shardfiles.has_any(files) and not files.upload.exists()  # the upload goes, as for a job run whole
    single = segment(model, data_dir / "geotiff" / "rgb-byte-tenth.tif", tmp_path / "one.tif", SegmentOptions(**FIXED))
    with rasterio.open(files.mask) as served, rasterio.open(single.output) as expected:
        np.testing.assert_array_equal(served.read(), expected.read())
        assert json.loads(served.tags()["TILESEG_SHARDS"]) == {"shards": 3}
    assert files.vectors.is_file() and files.preview.is_file()


def test_an_attempt_that_lost_its_shard_keeps_nothing(stores, model, data_dir, tmp_path):
    store, shards = stores
    config = RunConfig(data_dir=tmp_path, result_ttl=60, heartbeat=0.05)
    job, files = planned(stores, model, data_dir, tmp_path, config, count=2)
    stale = shards.claim("stale", job.id, 0)
    time.sleep(0.3)
    requeued, _ = shards.reap(lease=0.2, max_attempts=3)
    assert [s.number for s in requeued] == [0]
    fresh = shards.claim("fresh", job.id, 0)
    outcome = run_shard_job(stores, stale, lambda n, p: model, config, lambda: False, "stale")
    assert outcome.status is RunStatus.LOST
    assert not shardfiles.attempt_folder(files, 0, stale.token).exists()
    assert shards.get(job.id, 0).token == fresh.token and shards.get(job.id, 0).status.value == "running"


def test_how_many_shards(stores, model):
    store, _ = stores
    spec = model.spec

    def count(options: dict, width: int = 1000, height: int = 1000):
        job_id = new_job_id()
        record = JobOptions(**options).to_record()
        input_ = {"width": width, "height": height}
        store.create(id=job_id, owner=None, model="m", options=record, input=input_, input_path="/x", input_owned=False)
        return shard_count(store.get(job_id), spec, shard_pixels=300_000)

    assert count({}) == ShardCount(4, automatic=True)  # 10^6 pixels: one shard per 300 000, rounded up
    assert count({}, 500, 500) == ShardCount(1, automatic=True)  # below the size: whole
    assert count({"shards": 2}) == ShardCount(2, automatic=False)  # asked for: as asked, whatever the size
    assert count({"shards": 1}) == ShardCount(1, automatic=False)
    assert count({"blend": "gaussian"}) == ShardCount(1, automatic=True)  # blended: never automatically
