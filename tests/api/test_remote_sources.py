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
from tests.engine.test_stac import write_item


def write_items(folder, allowed: str, trap: str) -> None:
    """``items/item.json``: a ``visual`` asset (the scene, by a relative href) and the scene's bands as
    single-band assets of common names red, green, blue; and items that each name one asset off the list."""
    (folder / "items").mkdir()
    with rasterio.open(folder / "scene.tif") as src:
        data, profile = src.read(), src.profile
    bands = {}
    for i, name in enumerate(("red", "green", "blue")):
        with rasterio.open(folder / "items" / f"{name}.tif", "w", **{**profile, "count": 1}) as dst:
            dst.write(data[i : i + 1])
        bands[name] = {"href": f"{name}.tif", "eo:bands": [{"common_name": name}]}
    write_item(folder / "items", {"visual": {"href": "../scene.tif"}, **bands}, "item.json")
    for name, href in BAD_ASSETS.items():
        href = href.format(allowed=allowed, trap=trap)
        write_item(folder / "items", {"visual": {"href": "../scene.tif"}, "extra": {"href": href}}, f"{name}.json")


BAD_ASSETS = {
    "trap": "{trap}/cogs/scene.tif",
    "escape": "../../secret/scene.tif",
    "metadata": "http://169.254.169.254/latest/meta-data/x.tif",
    "vrt": "../scene.vrt",
    "redirected": "{allowed}/cogs/moved.tif",
    "file": "file:///etc/passwd",
}


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """The allowed COG server (one request in five answered 503) and a trap that must see no request; STAC
    items under the allowed prefix, good and bad, and redirects from the allowed server."""
    root = tmp_path_factory.mktemp("remote")
    (root / "cogs").mkdir()
    write_cog(root / "cogs" / "scene.tif", 256)
    allowed, trap = RangeServer(root, fail_every=5), RangeServer(root)
    write_items(root / "cogs", allowed.url, trap.url)
    allowed.redirects.update(
        {
            "/cogs/moved.tif": f"{trap.url}/cogs/scene.tif",
            "/cogs/alias.tif": f"{allowed.url}/cogs/scene.tif",
            "/cogs/items/moved.json": f"{trap.url}/cogs/items/item.json",
        }
    )
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
    "a redirect to the trap": "http://{allowed}/cogs/moved.tif",
    "an item redirected to the trap": "http://{allowed}/cogs/items/moved.json",
    "an item off the list": "http://{trap}/cogs/items/item.json",
    **{f"an item with an asset: {name}": f"http://{{allowed}}/cogs/items/{name}.json" for name in BAD_ASSETS},
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


def _pixels(data: bytes):
    with rasterio.open(io.BytesIO(data)) as src:
        return src.read(1)


def test_a_stac_item_and_an_allowed_redirect_are_segmented_as_the_upload(remote_server, hosts):
    allowed, trap = hosts
    before = trap.requests
    with remote_server.client() as client:
        upload = submit(client, allowed.root / "cogs" / "scene.tif")
        expected = _pixels(client.get(f"/jobs/{wait_for(client, upload.json()['id'])['id']}/mask").content)
        item = f"{allowed.url}/cogs/items/item.json"
        for fields in (
            {"source": item},
            {"source": item, "bands": "red,green,blue"},
            {"source": f"{allowed.url}/cogs/alias.tif"},
        ):
            answer = submit(client, **fields)
            assert answer.status_code == 202, answer.text
            job = wait_for(client, answer.json()["id"])
            assert job["status"] == "succeeded", job
            np.testing.assert_array_equal(_pixels(client.get(f"/jobs/{job['id']}/mask").content), expected)
            # the viewer's base layer: the asset's raster; a stack of assets has none (the mask only)
            has_view = client.get(f"/jobs/{job['id']}/tiles").json()["urls"]["input"] is not None
            assert has_view == ("bands" not in fields), fields
        assert job["input"]["name"] == "alias.tif"
        answer = submit(client, source=item, asset="nir")
        assert answer.status_code == 400 and "its assets: visual, red (red)" in answer.json()["error"]["message"]
        answer = submit(client, source=f"{allowed.url}/cogs/scene.tif", bands="red,green,blue")
        assert answer.status_code == 422 and "choose from a STAC item" in answer.json()["error"]["message"]
    assert trap.requests == before


def test_uploads_are_opened_with_the_accepted_drivers_only(remote_server, hosts, tmp_path):
    _allowed, trap = hosts
    before = trap.requests
    vrt = tmp_path / "scene.tif"  # a VRT under a GeoTIFF's name, naming a file on the trap
    vrt.write_text(
        '<VRTDataset rasterXSize="256" rasterYSize="256"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f"<SourceFilename>/vsicurl/{trap.url}/cogs/scene.tif</SourceFilename><SourceBand>1</SourceBand>"
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    grid = tmp_path / "grid.tif"  # an ASCII grid, which GDAL reads, under a GeoTIFF's name
    grid.write_text("ncols 4\nnrows 4\nxllcorner 0\nyllcorner 0\ncellsize 1\n" + "1 2 3 4\n" * 4)
    with remote_server.client() as client:
        for path in (vrt, grid):
            answer = submit(client, path)
            assert answer.status_code == 415, answer.text
            error = answer.json()["error"]
            assert error["code"] == "unreadable_input" and "not a raster in a format accepted here" in error["message"]
            assert "GTiff" in error["message"] and "VRT" not in error["message"].split(":")[0]
    assert trap.requests == before
