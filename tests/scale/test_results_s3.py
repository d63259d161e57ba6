"""Queue mode with no shared disk: the API and the worker each have a data folder of their own, and the
uploads and results live in S3 (a real endpoint on loopback, moto's server). A job by upload and one by an
``s3://`` source under TILESEG_SOURCE_ALLOW both succeed with the command line's mask; neither data folder
keeps anything of them; one that fails leaves no object behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.api.conftest import Server, submit, wait_for
from tests.conftest import write_raster
from tests.scale.conftest import SCALE_SETTINGS, WorkerProcess, cli_mask, mask_of
from tests.scale.launch import LAUNCH, SERVE_ARGS

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
    yield api, folders, bucket
    worker.stop()
    api.stop()


def test_api_and_worker_share_no_disk(no_shared_disk, s3_server, weights, data_dir, tmp_path):
    api, folders, bucket = no_shared_disk
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
