"""Uploads and results in S3 (``TILESEG_RESULTS_URL=s3://bucket/prefix/``) through a real server and a real S3
endpoint on loopback (moto's server): the results land under the prefix, come back through the API (whole,
by byte range, or by a presigned redirect) equal to those of a server that keeps them on disk, the viewer
reads its tiles from the store, and a DELETE or the expiry removes every object of the job. Also: results in a
local folder of their own."""

from __future__ import annotations

import io
import sys
import time

import httpx
import morecantile
import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import KEY_A, Server, submit, wait_for
from tests.api.test_flow import assert_same_raster, download
from tests.conftest import REPO
from tileseg.client import Client

sys.path.insert(0, str(REPO / "qgis"))  # the QGIS plug-in's HTTP part is plain Python (the stdlib's http.client)
from tileseg_qgis.remote import Remote

IMAGE = "geotiff/RGB.byte.tif"
OPTIONS = {"tile": 128, "probabilities": True, "vectors": True}


def start(s3_server, server_env, data, log, **settings) -> Server:
    """A server whose uploads and results live in S3, with the AWS variables a user sets."""
    return Server(data, {**server_env(data, **settings), **s3_server.env}, log).start()


@pytest.fixture(scope="module")
def s3_results(s3_server, server_env, tmp_path_factory):
    bucket = s3_server.bucket()
    data = tmp_path_factory.mktemp("s3-results-data")
    srv = start(s3_server, server_env, data, data.parent / "s3-results.log", results_url=f"s3://{bucket}/tileseg/")
    yield srv, bucket
    srv.stop()


def wait_gone(s3_server, bucket: str, prefix: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while s3_server.keys(bucket, prefix) and time.monotonic() < deadline:
        time.sleep(0.2)
    return s3_server.keys(bucket, prefix)


def test_results_land_in_the_bucket_and_equal_those_on_disk(s3_results, s3_server, client, data_dir, tmp_path):
    srv, bucket = s3_results
    with srv.client() as remote:
        answer = submit(remote, data_dir / IMAGE, **OPTIONS)
        assert answer.status_code == 202, answer.text
        job = wait_for(remote, answer.json()["id"])
        assert job["status"] == "succeeded", (job, srv.log_tail())
        keys = s3_server.keys(bucket, f"tileseg/jobs/{job['id']}/")
        names = sorted(key.rsplit("/", 1)[1] for key in keys)
        assert names == ["mask.tif", "preview.png", "probabilities.tif", "vectors.gpkg", "view.tif"], keys
        assert all("/attempts/" in key for key in keys), "the upload is gone, the published attempt's results kept"
        assert not (srv.data_dir / "jobs" / job["id"]).exists(), "nothing of the job stays on the API's disk"
        mask = download(remote, job["links"]["mask"], tmp_path / "s3-mask.tif")
        probs = download(remote, job["links"]["probabilities"], tmp_path / "s3-probs.tif")
        whole = remote.get(job["links"]["mask"])
        assert whole.headers["content-type"] == "image/tiff"
        assert 'filename="RGB.byte.mask.tif"' in whole.headers["content-disposition"]
        for asked, expected in (("bytes=0-99", whole.content[:100]), ("bytes=-10", whole.content[-10:])):
            part = remote.get(job["links"]["mask"], headers={"Range": asked})
            assert part.status_code == 206 and part.content == expected, asked
        past = remote.get(job["links"]["mask"], headers={"Range": f"bytes={len(whole.content)}-"})
        assert past.status_code == 416
        geojson = remote.get(job["links"]["vectors"], params={"format": "geojson"})
        assert geojson.status_code == 200 and geojson.json()["type"] == "FeatureCollection"
        assert any(k.endswith("vectors.geojson") for k in s3_server.keys(bucket, f"tileseg/jobs/{job['id']}/"))
    # the same image on the shared server, which keeps its results on disk
    local = wait_for(client, submit(client, data_dir / IMAGE, **OPTIONS).json()["id"])
    assert_same_raster(mask, download(client, local["links"]["mask"], tmp_path / "disk-mask.tif"))
    assert_same_raster(probs, download(client, local["links"]["probabilities"], tmp_path / "disk-probs.tif"))


def test_the_viewer_reads_its_tiles_from_the_store(s3_results, data_dir):
    srv, _bucket = s3_results
    with srv.client() as remote:
        job = wait_for(remote, submit(remote, data_dir / "geotiff" / "rgb-byte-tenth.tif").json()["id"])
        tiles = remote.get(job["links"]["tiles"]).json()
        assert tiles["kind"] == "xyz" and tiles["urls"]["input"], tiles
        west, south, east, north = tiles["bounds"]
        z = tiles["max_zoom"]
        tile = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, z)
        for layer in ("input", "mask"):
            answer = remote.get(f"/jobs/{job['id']}/tiles/{layer}/{z}/{tile.x}/{tile.y}.png")
            assert answer.status_code == 200, answer.text
            picture = np.asarray(Image.open(io.BytesIO(answer.content)))
            assert picture.shape == (256, 256, 4) and picture[..., 3].max() == 255


def test_a_redirect_to_a_presigned_url(s3_server, server_env, data_dir, tmp_path):
    bucket = s3_server.bucket()
    srv = start(
        s3_server,
        server_env,
        tmp_path / "data",
        tmp_path / "s.log",
        results_url=f"s3://{bucket}/r/",
        results_redirect=1,
    )
    try:
        with srv.client() as remote:
            job = wait_for(remote, submit(remote, data_dir / IMAGE, tile=128).json()["id"])
            answer = remote.get(job["links"]["mask"])
            assert answer.status_code == 307, answer.text
            location = answer.headers["location"]
            assert location.startswith(s3_server.endpoint) and "Signature" in location
            fetched = httpx.get(location)  # no API key, no AWS credentials: the URL is the permission
            key = next(k for k in s3_server.keys(bucket, f"r/jobs/{job['id']}/") if k.endswith("/mask.tif"))
            stored = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
            assert fetched.status_code == 200 and fetched.content == stored
            assert remote.get(f"/jobs/{job['id']}/preview.png").status_code == 307
        # the Python client (and `tileseg segment --server`) and the QGIS plug-in follow the redirect to the store
        with Client(srv.url, api_key=KEY_A) as client:
            assert client.download(job["id"], "mask", tmp_path / "client.tif").read_bytes() == stored
        qgis_remote = Remote(srv.url, KEY_A)
        qgis_remote.download(job["links"]["mask"], str(tmp_path / "qgis.tif"))
        assert (tmp_path / "qgis.tif").read_bytes() == stored
    finally:
        srv.stop()


def test_delete_and_expiry_remove_every_object(s3_server, server_env, data_dir, tmp_path):
    bucket = s3_server.bucket()
    srv = start(
        s3_server,
        server_env,
        tmp_path / "data",
        tmp_path / "s.log",
        results_url=f"s3://{bucket}/t/",
        result_ttl=3,
        sweep_interval=0.3,
    )
    try:
        with srv.client() as remote:
            dropped = submit(remote, data_dir / IMAGE, tile=128).json()
            expiring = submit(remote, data_dir / IMAGE, tile=128).json()
            wait_for(remote, dropped["id"])
            assert s3_server.keys(bucket, f"t/jobs/{dropped['id']}/")
            assert remote.delete(f"/jobs/{dropped['id']}").status_code == 204
            assert s3_server.keys(bucket, f"t/jobs/{dropped['id']}/") == []
            assert wait_for(remote, expiring["id"], until=("expired",), timeout=30)["status"] == "expired"
            assert wait_gone(s3_server, bucket, f"t/jobs/{expiring['id']}/") == []
            assert remote.get(expiring["links"]["mask"]).status_code == 410
    finally:
        srv.stop()


def test_an_unreachable_bucket_is_not_ready(s3_server, server_env, data_dir, tmp_path):
    data = tmp_path / "data"
    env = {**server_env(data, results_url="s3://no-such-bucket/x/"), **s3_server.env}
    srv = Server(data, env, tmp_path / "s.log")
    with pytest.raises(RuntimeError, match="did not get ready"):
        srv.start(timeout=8)
    try:
        answer = httpx.get(f"{srv.url}/readyz")
        assert answer.status_code == 503 and answer.json()["checks"]["results"] is False, answer.text
        with srv.client() as remote:  # a job cannot be kept there: the server says so, the bucket's fault
            refused = submit(remote, data_dir / IMAGE, tile=128)
        assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
        error = refused.json()["error"]
        assert error["code"] == "object_store_error" and "s3://no-such-bucket/x/" in error["message"]
        assert not list((tmp_path / "data" / "jobs").iterdir()), "nothing of the refused job is kept"
    finally:
        srv.stop()


def test_results_in_a_folder_of_their_own(start_server, data_dir, tmp_path):
    """TILESEG_RESULTS_URL as a path: the job folders lie there (a shared mount, say), the job table in DATA_DIR."""
    results = tmp_path / "results"
    results.mkdir()
    srv = start_server(tmp_path / "data", results_url=str(results))
    with srv.client() as client:
        job = wait_for(client, submit(client, data_dir / IMAGE, tile=128).json()["id"])
        assert job["status"] == "succeeded", job
        assert (results / "jobs" / job["id"] / "mask.tif").is_file()
        assert not (tmp_path / "data" / "jobs" / job["id"]).exists() and (tmp_path / "data" / "jobs.db").is_file()
        assert client.get(job["links"]["mask"]).content == (results / "jobs" / job["id"] / "mask.tif").read_bytes()
