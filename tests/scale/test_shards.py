"""Sharded jobs with real parts: the API in queue mode, Celery workers, Redis, PostgreSQL, all on loopback.

* ``shards`` 2, 3 (the form) and 6 (the JSON of OGC API - Processes): the mask, probabilities and polygons
  equal the command line's single run, on an image whose height is not a multiple of the tile, with objects
  crossing every shard seam, and an ROI (``roi=auto``).
* A worker SIGKILLed in the middle of a shard: the job succeeds with the same mask; only that shard ran twice.
* A shard that always fails (its band of the input is corrupt on disk): the job fails with that reason, no
  mask is published, no shard file is left.
* Cancel during a sharded run: every shard stops, and the job's files go.
* SIGTERM on a worker past its grace: its shard goes back to the queue, its attempt not counted.
* Past the workers' ``TILESEG_SHARD_PIXELS``, a job without ``shards`` is sharded; a blended one is refused.

The ``slow`` test model (0.1 s a batch of 4 tiles in PyTorch; its mask is the input, shifted by (3, -5)
within each window, so seams are exact only if each shard reads its halo) makes a shard last long enough to
kill or cancel; those tests ask for ``runtime=torch``, as an exported runtime would not sleep.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely

from tests.api.conftest import submit, wait_for
from tests.conftest import write_raster
from tests.scale.conftest import PUBLISHED, cli_mask, mask_of
from tileseg.jobs.shards.store import ShardStore
from tileseg.jobs.table import ShardStatus

pytestmark = pytest.mark.slow

HEIGHT, WIDTH = 300, 200  # 300 = 9 tiles of 32 and 12 rows: the last tile row is short


def tissue(path: Path, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> Path:
    """A grey image: bright glass (240) with dark tissue (0-2) in columns 20-169, all the way down; in it,
    bars of 1 and 2 from top to bottom (across every shard seam) and specks. ``roi=auto`` finds the tissue."""
    rng = np.random.default_rng(seed)
    data = np.full((1, height, width), 240, np.uint8)
    data[0, :, 20:170] = 0
    data[0, :, 40:44] = 1
    data[0, 2:, 80:83] = 2
    specks = rng.random((height, 150)) < 0.05
    data[0, :, 20:170][specks] = rng.integers(1, 3, int(specks.sum()))
    return write_raster(
        path,
        data,
        crs=None,
        transform=rasterio.Affine.identity(),
        tiled=True,
        blockxsize=16,
        blockysize=16,
        compress="deflate",
    )


def features(path: Path):
    _, _, wkb, values = pyogrio.raw.read(path)
    return list(wkb), [list(v) for v in values]


def shard_rows(scale, job_id: str):
    store = scale.store()
    try:
        return ShardStore(store).list(job_id)
    finally:
        store.close()


def shard_files(scale, job_id: str) -> list[Path]:
    return sorted((scale.data / "jobs" / job_id / "shards").glob("**/*"))


def wait_shard_running(scale, job_id: str, tiles: int = 1, timeout: float = 90):
    """Wait until some shard of the job runs and has done at least ``tiles`` tiles; returns its row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [s for s in shard_rows(scale, job_id) if s.status is ShardStatus.RUNNING and s.tiles_done >= tiles]
        if running:
            return running[0]
        time.sleep(0.05)
    raise AssertionError(f"no shard of job {job_id} ran: {shard_rows(scale, job_id)}")


def test_sharded_jobs_equal_the_single_process_run(scale, weights, tmp_path, inputs_root):
    source = tissue(inputs_root / "tissue.tif")
    options = {"tile": 32, "roi": "auto"}
    expected = cli_mask(weights, source, tmp_path / "cli.tif", "slow", vectors=tmp_path / "cli.gpkg", **options)
    # with probabilities, each polygon also carries its mean probability: a run of its own
    cli = {"vectors": tmp_path / "cli-p.gpkg", "probabilities": tmp_path / "cli.probabilities.tif"}
    cli_mask(weights, source, tmp_path / "cli-p.tif", "slow", **cli, **options)
    assert (expected == 255).any() and {0, 1, 2} <= set(np.unique(expected))  # outside the ROI, and classes
    expected_features = features(tmp_path / "cli.gpkg")
    scale.start_workers(3)
    with scale.api.client() as client:
        jobs = {}
        for count in (2, 3):
            extra = {"probabilities": True} if count == 2 else {}  # 200 bands: once is enough
            response = submit(client, source, model="slow", shards=count, vectors=True, **extra, **options)
            assert response.status_code == 202, response.text
            assert response.json()["options"]["shards"] == count
            jobs[count] = response.json()["id"]
        # the JSON option: OGC API - Processes' execute, the image by reference (an input root)
        inputs = {"image": {"href": str(source)}, "model": "slow", "shards": 6, **options}
        response = client.post(
            "/ogc/processes/segment/execution",
            json={"inputs": inputs, "outputs": {"mask": {}, "vectors": {}}},
            headers={"Prefer": "respond-async"},
        )
        assert response.status_code == 201, response.text
        jobs[6] = response.json()["jobID"]
        for count, job_id in jobs.items():
            job = wait_for(client, job_id, timeout=180)
            assert job["status"] == "succeeded", job
            assert job["shards"] == {"total": count, "queued": 0, "running": 0, "done": count}
            assert job["progress"]["tiles_done"] == job["progress"]["tiles_total"] > 0
            assert job["result"]["roi"]["tiles_skipped"] > 0
            np.testing.assert_array_equal(mask_of(client, job, tmp_path / f"{count}.tif"), expected)
            response = client.get(job["links"]["vectors"])
            assert response.status_code == 200, response.text
            (tmp_path / f"{count}.gpkg").write_bytes(response.content)
            want = features(cli["vectors"]) if count == 2 else expected_features
            assert features(tmp_path / f"{count}.gpkg") == want, f"{count} shards"
            assert client.get(job["links"]["preview"]).status_code == 200
            if count == 2:
                response = client.get(job["links"]["probabilities"])
                assert response.status_code == 200, response.text
                (tmp_path / "2.probabilities.tif").write_bytes(response.content)
                with (
                    rasterio.open(tmp_path / "2.probabilities.tif") as got,
                    rasterio.open(cli["probabilities"]) as want,
                ):
                    np.testing.assert_array_equal(got.read(), want.read())
            assert scale.publications(job_id) == 1
            rows = shard_rows(scale, job_id)
            assert [s.number for s in rows] == list(range(count)) and all(s.attempts == 1 for s in rows)
            assert shard_files(scale, job_id) == []
    wkb, _ = expected_features
    tops = shapely.bounds(shapely.from_wkb(wkb))[:, 1]  # pixel space: y grows downwards
    bottoms = shapely.bounds(shapely.from_wkb(wkb))[:, 3]
    assert ((tops < 10) & (bottoms > HEIGHT - 10)).any(), "an object crosses every seam"


def test_a_worker_killed_mid_shard_loses_only_that_shard(scale, weights, tmp_path, inputs_root):
    source = tissue(inputs_root / "tissue-kill.tif", seed=1)
    options = {"tile": 16, "runtime": "torch"}  # 19 x 13 tiles: a shard of half the image sleeps 3 s
    workers = scale.start_workers(2)
    with scale.api.client() as client:
        job_id = submit(client, source, model="slow", shards=2, **options).json()["id"]
        victim_shard = wait_shard_running(scale, job_id, tiles=4)
        live = client.get(f"/jobs/{job_id}").json()  # the shards by state, and the tiles of them all
        assert live["status"] == "running" and live["shards"]["total"] == 2 and live["shards"]["running"] >= 1
        assert 4 <= live["progress"]["tiles_done"] < live["progress"]["tiles_total"] == 19 * 13
        pid = int((victim_shard.worker or "").rsplit(":", 1)[1])
        victim = next(w for w in workers if w.pid == pid)
        victim.signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        job = wait_for(client, job_id, timeout=120)
        assert job["status"] == "succeeded", job
        expected = cli_mask(weights, source, tmp_path / "cli.tif", "slow", **options)
        np.testing.assert_array_equal(mask_of(client, job, tmp_path / "served.tif"), expected)
    rows = shard_rows(scale, job_id)
    attempts = {s.number: s.attempts for s in rows}
    assert attempts == {n: 2 if n == victim_shard.number else 1 for n in range(2)}, attempts
    assert rows[victim_shard.number].published != victim_shard.token
    assert scale.publications(job_id) == 1 and job["attempts"] == 1
    assert shard_files(scale, job_id) == []


def corrupt_last_block_row(path: Path) -> None:
    """Overwrite the compressed bytes of every tile in the image's last block row: reading it fails."""
    with rasterio.open(path) as src:
        row = (src.height - 1) // 16
        blocks = [
            (
                int(src.get_tag_item(f"BLOCK_OFFSET_{x}_{row}", "TIFF", bidx=1)),
                int(src.get_tag_item(f"BLOCK_SIZE_{x}_{row}", "TIFF", bidx=1)),
            )
            for x in range((src.width + 15) // 16)
        ]
    with open(path, "r+b") as fh:
        for offset, size in blocks:
            fh.seek(offset)
            fh.write(b"\xff" * size)


def test_a_shard_that_fails_fails_the_job_and_leaves_nothing(scale, inputs_root):
    source = tissue(inputs_root / "tissue-corrupt.tif", seed=2)
    corrupt_last_block_row(source)  # rows 288-299: only the second of two shards (rows 160-299) reads them
    scale.start_workers(2)
    with scale.api.client() as client:
        job_id = submit(client, source, model="slow", shards=2, tile=32).json()["id"]
        job = wait_for(client, job_id, timeout=120)
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "unreadable_input", job["error"]  # the engine's own error, the shard's
        assert job["error"]["message"].startswith("shard 2 of 2 (tile rows 5-9) failed: input could not be read")
        assert client.get(job["links"]["mask"]).status_code == 409
        deadline = time.monotonic() + 30  # the first shard learns it at its next report, and removes its files
        while any(s.status is ShardStatus.RUNNING for s in shard_rows(scale, job_id)) or shard_files(scale, job_id):
            assert time.monotonic() < deadline, (shard_rows(scale, job_id), shard_files(scale, job_id))
            time.sleep(0.1)
    statuses = {s.number: s.status for s in shard_rows(scale, job_id)}
    assert statuses[1] is ShardStatus.FAILED and statuses[0] in (ShardStatus.CANCELED, ShardStatus.DONE)
    assert not (scale.data / "jobs" / job_id / "mask.tif").exists()
    assert scale.publications(job_id) == 0


def test_cancel_stops_every_shard(scale, inputs_root):
    source = tissue(inputs_root / "tissue-cancel.tif", seed=3)
    workers = scale.start_workers(3)
    with scale.api.client() as client:
        # 950 tiles: a shard sleeps 8 s in PyTorch (an exported runtime does not sleep)
        job_id = submit(client, source, model="slow", shards=3, tile=8, runtime="torch").json()["id"]
        wait_shard_running(scale, job_id, tiles=4)
        running = {s.number for s in shard_rows(scale, job_id) if s.status is ShardStatus.RUNNING}
        assert client.delete(f"/jobs/{job_id}").status_code == 204
        canceled = wait_for(client, job_id, until=("canceled",), timeout=10)
        assert canceled["shards"]["running"] == 0 and canceled["shards"]["queued"] == 0
        assert all(s.status is ShardStatus.CANCELED for s in shard_rows(scale, job_id))

        def stopped() -> set[int]:  # the shards whose worker logged that it stopped for the cancel
            lines = [
                line
                for w in workers
                for line in w.text().splitlines()
                if job_id in line and "stops: the job was canceled" in line
            ]
            return {n for n in range(3) if any(f"shard {n + 1} of 3 " in line for line in lines)}

        deadline = time.monotonic() + 5  # a batch of the slow net is 0.1 s: every running shard stops at once
        while not running <= stopped():
            assert time.monotonic() < deadline, f"shards {running - stopped()} ran on after the cancel"
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while (scale.data / "jobs" / job_id).exists():
            assert time.monotonic() < deadline, sorted((scale.data / "jobs" / job_id).glob("**/*"))
            time.sleep(0.1)
    logs = "".join(w.text() for w in workers)
    assert f"job {job_id} {PUBLISHED}" not in logs and f"job {job_id} shard" in logs
    assert not [line for line in logs.splitlines() if job_id in line and " done: " in line], "no shard finished"


def test_shards_come_automatically_past_the_workers_shard_pixels(scale, weights, tmp_path, inputs_root):
    source = tissue(inputs_root / "tissue-auto.tif", seed=4)  # 60 000 pixels
    scale.start_workers(2, shard_pixels=25_000)
    with scale.api.client() as client:
        blended = submit(client, source, model="slow", shards=2, blend="gaussian")
        assert blended.status_code == 422, blended.text
        assert blended.json()["error"]["code"] == "bad_options" and "blend=crop" in blended.json()["error"]["message"]
        job = wait_for(client, submit(client, source, model="slow", tile=32).json()["id"], timeout=120)
        assert job["status"] == "succeeded" and job["options"]["shards"] is None
        assert job["shards"] == {"total": 3, "queued": 0, "running": 0, "done": 3}
        expected = cli_mask(weights, source, tmp_path / "cli.tif", "slow", tile=32)
        np.testing.assert_array_equal(mask_of(client, job, tmp_path / "served.tif"), expected)


def test_sigterm_hands_a_shard_back_without_counting_it(scale, weights, tmp_path, inputs_root):
    source = tissue(inputs_root / "tissue-term.tif", seed=5)
    options = {"tile": 16, "runtime": "torch"}
    (impatient,) = scale.start_workers(1, shutdown_grace=0.5)
    with scale.api.client() as client:
        job_id = submit(client, source, model="slow", shards=2, **options).json()["id"]
        shard = wait_shard_running(scale, job_id, tiles=4)
        impatient.signal(signal.SIGTERM)
        assert impatient.wait(30) == 0, impatient.text()[-3000:]
        back = shard_rows(scale, job_id)[shard.number]
        assert back.status is ShardStatus.QUEUED and back.attempts == 0 and back.token is None
        scale.start_workers(1)
        job = wait_for(client, job_id, timeout=120)
        assert job["status"] == "succeeded", job
        expected = cli_mask(weights, source, tmp_path / "cli.tif", "slow", **options)
        np.testing.assert_array_equal(mask_of(client, job, tmp_path / "served.tif"), expected)
    assert all(s.attempts == 1 for s in shard_rows(scale, job_id)), "a handed-back attempt is not counted"
    assert scale.publications(job_id) == 1
