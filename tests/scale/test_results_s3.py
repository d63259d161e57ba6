"""Queue mode with no shared disk: the API and the worker each have a data folder of their own, and the
uploads and results live in S3 (a real endpoint on loopback, moto's server). A job by upload and one by an
``s3://`` source under TILESEG_SOURCE_ALLOW both succeed with the command line's mask; neither data folder
keeps anything of them; one that fails leaves no object behind. A sharded job over two workers with separate
disks is assembled from the shard files in the bucket."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.api.conftest import Server, submit, wait_for
from tests.conftest import write_raster
from tests.scale.conftest import SCALE_SETTINGS, WorkerProcess, cli_mask, mask_of
from tests.scale.launch import LAUNCH, SERVE_ARGS
from tests.scale.test_shards import tissue

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def no_shared_disk(tmp_path_factory, redis_server, postgres, server_env, s3_server):
    bucket = s3_server.bucket()
    logs = tmp_path_factory.mktemp("s3-scale-logs")
    database = postgres.create_database("tileseg_s3_scale")
    settings = {
        **SCALE_SETTINGS,
        "broker_url": redis_server.url,
        "database_url": database,
        "results_url": f"s3://{bucket}/results/",
        "source_allow": f"s3://{bucket}/scenes/",
    }
    folders = {role: tmp_path_factory.mktemp(f"s3-{role}-data") for role in ("api", "worker")}
    env = {role: {**server_env(folder, **settings), **s3_server.env} for role, folder in folders.items()}
    api = Server(folders["api"], env["api"], logs / "api.log", command=[*LAUNCH, *SERVE_ARGS]).start()
    worker = WorkerProcess(env["worker"], logs / "worker.log").start().wait_ready()
    yield api, folders, bucket, env["worker"], logs
    worker.stop()
    api.stop()


def test_api_and_worker_share_no_disk(no_shared_disk, s3_server, weights, data_dir, tmp_path):
    api, folders, bucket, _env, _logs = no_shared_disk
    image = data_dir / "geotiff" / "rgb-byte-tenth.tif"
    s3_server.client().upload_file(str(image), bucket, "scenes/tenth.tif")
    expected = cli_mask(weights, image, tmp_path / "cli.tif", "rgb-test")
    with api.client() as client:
        uploaded = submit(client, image, model="rgb-test")
        by_source = submit(client, None, model="rgb-test", source=f"s3://{bucket}/scenes/tenth.tif")
        refused = submit(client, None, model="rgb-test", source=f"s3://{bucket}/results/jobs/x/input")
        assert uploaded.status_code == by_source.status_code == 202, (uploaded.text, by_source.text)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "source_not_allowed"
        for n, answer in enumerate((uploaded, by_source)):
            job = wait_for(client, answer.json()["id"], timeout=120)
            assert job["status"] == "succeeded", job
            np.testing.assert_array_equal(mask_of(client, job, tmp_path / f"served-{n}.tif"), expected)
            keys = s3_server.keys(bucket, f"results/jobs/{job['id']}/")
            assert any(k.endswith("/mask.tif") for k in keys) and not any(k.endswith("/input") for k in keys)
            for role, folder in folders.items():
                assert not (folder / "jobs" / job["id"]).exists(), f"the {role}'s disk keeps nothing of the job"
        before = s3_server.keys(bucket, "results/")
        refused = submit(client, truncated(image, tmp_path / "truncated.tif"), model="rgb-test")
        assert refused.status_code == 415 and refused.json()["error"]["code"] == "unreadable_input", refused.text
        failed = submit(client, corrupt_block(tmp_path / "corrupt.tif"), model="rgb-test")
        assert failed.status_code == 202, failed.text  # its header is whole: the pixels fail on the worker
        job = wait_for(client, failed.json()["id"], timeout=120)
        assert job["status"] == "failed", job
        assert s3_server.keys(bucket, "results/") == before, "nothing of a refused or failed job stays in the store"


def truncated(image: Path, path: Path) -> Path:
    path.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    return path


def corrupt_block(path: Path) -> Path:
    """A tiled, deflated GeoTIFF whose last tile's compressed bytes are garbage: the header reads, that
    tile does not."""
    data = np.random.default_rng(0).integers(0, 255, (3, 256, 256), dtype=np.uint8)
    write_raster(path, data, tiled=True, blockxsize=128, blockysize=128, compress="deflate")
    with tifffile.TiffFile(path) as tif:
        offset, size = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * size)
    return path


def test_a_sharded_job_across_workers_with_no_shared_disk(no_shared_disk, s3_server, weights, tmp_path):
    """Three shards over two workers, each with a data folder of its own: the shards' files meet in the
    bucket, the last shard assembles from there, and the mask is the single run's."""
    api, folders, bucket, env, logs = no_shared_disk
    other = tmp_path / "second-worker"
    second = WorkerProcess({**env, "TILESEG_DATA_DIR": str(other)}, logs / "worker-2.log").start().wait_ready()
    try:
        source = tissue(tmp_path / "tissue.tif")
        expected = cli_mask(weights, source, tmp_path / "cli.tif", "slow", tile=32)
        with api.client() as client:
            answer = submit(client, source, model="slow", shards=3, tile=32)
            assert answer.status_code == 202, answer.text
            job = wait_for(client, answer.json()["id"], timeout=180)
            assert job["status"] == "succeeded", job
            assert job["shards"] == {"total": 3, "queued": 0, "running": 0, "done": 3}
            np.testing.assert_array_equal(mask_of(client, job, tmp_path / "served.tif"), expected)
        keys = s3_server.keys(bucket, f"results/jobs/{job['id']}/")
        assert keys and all("/attempts/" in k for k in keys), f"no shard file or upload is left: {keys}"
        for folder in (*folders.values(), other):
            assert not (folder / "jobs" / job["id"]).exists(), f"{folder} keeps nothing of the job"
    finally:
        second.stop()
