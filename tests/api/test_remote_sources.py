"""``source`` URLs through the API: a raster under a TILESEG_SOURCE_ALLOW prefix is segmented as its upload
would be; everything else is a 400 ``source_not_allowed`` answered before any request leaves the server (a
trap server on loopback counts the requests that reach it: none)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import rasterio

from tests.api.conftest import Server, submit, wait_for
from tests.engine.test_remote import RangeServer, write_cog


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """The allowed COG server (one request in five answered 503) and a trap that must see no request."""
    root = tmp_path_factory.mktemp("remote")
    (root / "cogs").mkdir()
    write_cog(root / "cogs" / "scene.tif", 256)
    allowed, trap = RangeServer(root, fail_every=5), RangeServer(root)
    yield allowed, trap
    allowed.close()
    trap.close()


@pytest.fixture(scope="module")
def remote_server(hosts, tmp_path_factory, server_env):
    allowed, trap = hosts
    data = tmp_path_factory.mktemp("remote-data")
    # the trap's host by name (it resolves to loopback) and the allowed server by its address
    allow = f"{allowed.url}/cogs/,http://localhost:{trap.httpd.server_port}/cogs/,s3://scenes/public/"
    srv = Server(data, server_env(data, source_allow=allow), data.parent / "remote-server.log").start()
    yield srv
    srv.stop()


def test_an_allowed_url_is_segmented_as_its_upload(remote_server, hosts, tmp_path):
    allowed, _trap = hosts
    with remote_server.client() as client:
        answer = submit(client, source=f"{allowed.url}/cogs/scene.tif?sig=SECRET")
        assert answer.status_code == 202, answer.text
        job = wait_for(client, answer.json()["id"])
        assert job["status"] == "succeeded", job
        assert job["input"]["name"] == "scene.tif" and "SECRET" not in str(job)
        remote_mask = client.get(f"/jobs/{job['id']}/mask").content
        upload = submit(client, allowed.root / "cogs" / "scene.tif")
        local = wait_for(client, upload.json()["id"])
        local_mask = client.get(f"/jobs/{local['id']}/mask").content

    def pixels(data: bytes):
        with rasterio.open(io.BytesIO(data)) as src:
            return src.read(1)

    np.testing.assert_array_equal(pixels(remote_mask), pixels(local_mask))
    assert "SECRET" not in remote_server.log_tail(100000)


REFUSED = {
    "no prefix": "http://{allowed}/other/scene.tif",
    "dot-dot out of the prefix": "http://{allowed}/cogs/../secret/scene.tif",
    "encoded dot-dot": "http://{allowed}/cogs/%2e%2e/secret/scene.tif",
    "another bucket": "s3://private/public/scene.tif",
    "another folder of the bucket": "s3://scenes/private/scene.tif",
    "file url": "file:///etc/passwd",
    "raw gdal path": "/vsicurl/http://{trap}/cogs/scene.tif",
    "mem dataset": "MEM:::DATAPOINTER=0,PIXELS=1,LINES=1",
    "a vrt": "http://{allowed}/cogs/scene.vrt",
    "credentials in the url": "http://user:pw@{allowed}/cogs/scene.tif",
    "a listed name resolving to loopback": "http://{trap_by_name}/cogs/scene.tif",
    "the metadata endpoint": "http://169.254.169.254/latest/meta-data/",
    "the trap by address": "http://{trap}/cogs/scene.tif",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_sources_make_no_request(remote_server, hosts, case):
    allowed, trap = hosts
    before = trap.requests
    source = REFUSED[case].format(
        allowed=allowed.url.removeprefix("http://"),
        trap=trap.url.removeprefix("http://"),
        trap_by_name=f"localhost:{trap.httpd.server_port}",
    )
    with remote_server.client() as client:
        answer = submit(client, source=source)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "source_not_allowed" and "pw" not in error["message"], error
    assert trap.requests == before


def test_a_server_without_a_list_reads_no_url(client):
    answer = submit(client, source="https://example.com/cogs/a.tif")
    assert answer.status_code == 400 and "TILESEG_SOURCE_ALLOW" in answer.json()["error"]["message"]


def test_bad_prefixes_stop_the_server_at_start(start_server):
    with pytest.raises(RuntimeError, match="source_allow"):
        start_server(source_allow="s3://scenes/public")  # not a folder: would also match public-secret/
