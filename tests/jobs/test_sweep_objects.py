"""The sweeper with results in S3 (a real endpoint on loopback, moto's server): the objects of expired,
canceled, failed and unknown jobs go (unknown ones only once stale), a succeeded job keeps its published
results and loses its upload, shard files and the attempts that lost; a running job is left alone."""

from __future__ import annotations

import pytest

from tileseg.jobs import sweeper
from tileseg.jobs.objects import ObjectResults
from tileseg.jobs.store import JobStatus, JobStore, new_job_id


@pytest.fixture
def setting(s3, tmp_path):
    bucket = s3.bucket()
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    objects = ObjectResults(f"s3://{bucket}/p/")
    yield s3, bucket, store, objects
    store.close()


def make_job(store: JobStore, objects: ObjectResults) -> str:
    job_id = new_job_id()
    store.create(
        id=job_id,
        owner=None,
        model="m",
        options={},
        input={"name": "x"},
        input_path=objects.input(job_id).url,
        input_owned=True,
    )
    return job_id


def put(s3, bucket: str, *keys: str) -> None:
    for key in keys:
        s3.client().put_object(Bucket=bucket, Key=key, Body=b"x")


def test_what_each_job_keeps(setting, tmp_path, monkeypatch):
    s3, bucket, store, objects = setting
    ids = {name: make_job(store, objects) for name in ("succeeded", "failed", "canceled", "running", "expired")}
    for job_id in ids.values():
        put(s3, bucket, f"p/jobs/{job_id}/input")
    won = store.claim("w", ids["succeeded"])
    put(
        s3,
        bucket,
        *(f"p/jobs/{won.id}/{rest}" for rest in ("attempts/aaaa0000/mask.tif", "shards/0000-bbbb1111/m.tif")),
    )
    put(s3, bucket, f"p/jobs/{won.id}/attempts/{won.token}/mask.tif", f"p/jobs/{won.id}/attempts/{won.token}/view.tif")
    assert store.finish(won.id, won.token, JobStatus.SUCCEEDED, ttl=3600, result={})
    lost = store.claim("w", ids["failed"])
    assert store.finish(lost.id, lost.token, JobStatus.FAILED, error=("unreadable_input", "bad"))
    store.cancel(ids["canceled"])
    running = store.claim("w", ids["running"])
    put(s3, bucket, f"p/jobs/{running.id}/attempts/{running.token}/mask.tif")
    done = store.claim("w", ids["expired"])
    assert store.finish(done.id, done.token, JobStatus.SUCCEEDED, ttl=0, result={})
    unknown = new_job_id()
    put(s3, bucket, f"p/jobs/{unknown}/input", "elsewhere/keep.tif")

    sweeper.sweep(store, tmp_path, objects=objects)  # a fresh unknown upload may be a request still arriving
    assert s3.keys(bucket, "p/jobs/") == sorted(
        [
            f"p/jobs/{won.id}/attempts/aaaa0000/mask.tif",  # a lost attempt's, but not stale yet
            f"p/jobs/{won.id}/attempts/{won.token}/mask.tif",
            f"p/jobs/{won.id}/attempts/{won.token}/view.tif",
            f"p/jobs/{running.id}/attempts/{running.token}/mask.tif",
            f"p/jobs/{running.id}/input",
            f"p/jobs/{unknown}/input",
        ]
    )
    monkeypatch.setattr(sweeper, "STALE_FOLDER", -1.0)  # now everything is old
    sweeper.sweep(store, tmp_path, objects=objects)
    assert s3.keys(bucket, "p/jobs/") == sorted(
        [
            f"p/jobs/{won.id}/attempts/{won.token}/mask.tif",
            f"p/jobs/{won.id}/attempts/{won.token}/view.tif",
            f"p/jobs/{running.id}/attempts/{running.token}/mask.tif",
            f"p/jobs/{running.id}/input",
        ]
    )
    assert s3.keys(bucket, "elsewhere/") == ["elsewhere/keep.tif"], "nothing outside the prefix is touched"
