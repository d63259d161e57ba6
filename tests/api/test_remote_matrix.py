"""Remote ``source`` URLs and OGC ``href`` s through a real embedded server, against every kind of server a user
meets: an S3-compatible store named by ``AWS_ENDPOINT_URL`` (moto, path-style), a server answering 503 to one
request in five, one that redirects (within the allow-list), one that ignores Range (fetched whole into the
job's own storage, or refused naming Range past the upload limit) and one that stops answering in the middle
of a body (the job fails in bounded time saying so, and can be canceled). Each mask equals the upload's."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import rasterio

from tests.api.conftest import MAX_UPLOAD, Server, submit, wait_for
from tests.engine.test_remote import RangeServer, write_cog


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """The scene (512^2) and a scene larger than the server's upload limit, on: a flaky server (which also
    redirects), a server without Range and a server that stalls past the header."""
    root = tmp_path_factory.mktemp("matrix")
    (root / "cogs").mkdir()
    write_cog(root / "cogs" / "scene.tif", 512, seed=5)
    write_cog(root / "cogs" / "big.tif", 2048, seed=6)
    assert (root / "cogs" / "big.tif").stat().st_size > MAX_UPLOAD
    servers = {
        "flaky": RangeServer(root, fail_every=5),
        "plain": RangeServer(root, ranges=False),
        "stalled": RangeServer(root, stall_from=20000),
    }
    servers["flaky"].redirects["/cogs/moved.tif"] = f"{servers['flaky'].url}/cogs/scene.tif"
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture(scope="module")
def matrix_server(hosts, tmp_path_factory, server_env, s3_server):
    data = tmp_path_factory.mktemp("matrix-data")
    bucket = s3_server.bucket()
    s3_server.client().upload_file(str(hosts["flaky"].root / "cogs" / "scene.tif"), bucket, "public/scene.tif")
    allow = ",".join([*(f"{s.url}/cogs/" for s in hosts.values()), f"s3://{bucket}/public/"])
    settings = dict(source_allow=allow, http_read_timeout=1, http_max_retry=1, http_retry_delay=0.05)
    env = {**server_env(data, **settings), **s3_server.env}
    env.pop("AWS_ENDPOINT_URL_S3", None)
    srv = Server(data, env, data.parent / "matrix-server.log").start()
    srv.bucket = bucket
    yield srv
    srv.stop()


def pixels(data: bytes) -> np.ndarray:
    with rasterio.open(io.BytesIO(data)) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def expected(matrix_server, hosts):
    with matrix_server.client() as client:
        job = wait_for(client, submit(client, hosts["flaky"].root / "cogs" / "scene.tif").json()["id"])
        return pixels(client.get(f"/jobs/{job['id']}/mask").content)


def test_every_source_gives_the_uploads_mask(matrix_server, hosts, expected):
    flaky, plain = hosts["flaky"], hosts["plain"]
    sources = {
        "s3 with its own endpoint": f"s3://{matrix_server.bucket}/public/scene.tif",
        "flaky": f"{flaky.url}/cogs/scene.tif?sig=SECRET",
        "redirect": f"{flaky.url}/cogs/moved.tif",
        "no range": f"{plain.url}/cogs/scene.tif",
    }
    with matrix_server.client() as client:
        for name, source in sources.items():
            answer = submit(client, source=source)
            assert answer.status_code == 202, (name, answer.text)
            job = wait_for(client, answer.json()["id"])
            assert job["status"] == "succeeded", (name, job)
            assert job["input"]["name"] in ("scene.tif", "moved.tif") and "SECRET" not in str(job)
            np.testing.assert_array_equal(pixels(client.get(f"/jobs/{job['id']}/mask").content), expected, name)
    assert flaky.failures >= 1
    assert "SECRET" not in matrix_server.log_tail(100000)


def test_an_ogc_href_without_range_is_segmented_and_a_large_one_refused_naming_range(matrix_server, hosts, expected):
    plain = hosts["plain"]
    with matrix_server.client() as client:
        raw = client.post(
            "/ogc/processes/segment/execution",
            json={"inputs": {"image": {"href": f"{plain.url}/cogs/scene.tif"}, "model": "rgb-test"}, "response": "raw"},
            timeout=120,
        )
        assert raw.status_code == 200, raw.text
        np.testing.assert_array_equal(pixels(raw.content), expected)
        answer = client.post(
            "/ogc/processes/segment/execution",
            json={"inputs": {"image": {"href": f"{plain.url}/cogs/big.tif"}, "model": "rgb-test"}},
        )
        assert answer.status_code == 422, answer.text
        assert "does not support Range requests" in answer.json()["detail"]
        answer = submit(client, source=f"{plain.url}/cogs/big.tif")
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "no_range_support", answer.text
    assert not list(matrix_server.data_dir.rglob("*.part")), "a refused fetch leaves nothing"


def test_a_stalled_source_fails_its_job_in_bounded_time_and_can_be_canceled(matrix_server, hosts):
    stalled = hosts["stalled"]
    with matrix_server.client() as client:
        started = time.monotonic()
        answer = submit(client, source=f"{stalled.url}/cogs/scene.tif?token=SECRET")
        assert answer.status_code == 202, answer.text  # the header reads; the tiles never come
        job = wait_for(client, answer.json()["id"], timeout=60)
        assert time.monotonic() - started < 60
        assert job["status"] == "failed" and job["error"]["code"] == "source_unavailable", job
        assert "stopped answering" in job["error"]["message"] and "SECRET" not in str(job)
        second = submit(client, source=f"{stalled.url}/cogs/scene.tif").json()
        wait_for(client, second["id"], until=("running",), timeout=30)
        deadline = time.monotonic() + 30
        while stalled.stalls < 2 and time.monotonic() < deadline:  # cancel it while it is waiting on the source
            time.sleep(0.1)
        assert client.delete(f"/jobs/{second['id']}").status_code == 204
        assert wait_for(client, second["id"], until=("canceled", "failed"), timeout=60)["status"] == "canceled"
    assert stalled.stalls >= 2
