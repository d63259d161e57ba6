"""The viewer's routes on the real server: the page and its assets, live events, and tiles (with keys,
ownership, caching and their errors)."""

from __future__ import annotations

import io
import json

import morecantile
import numpy as np
from PIL import Image

from tests.api.conftest import KEY_B, submit, wait_for


def _events(client, job_id: str) -> list[tuple[str, str]]:
    """The server-sent events of a job, to the end of the stream: (event, data) pairs."""
    events, kind, data = [], None, []
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and kind:
                events.append((kind, "\n".join(data)))
                kind, data = None, []
    return events


def test_page_and_assets_are_public(server):
    with server.client(key=None) as anonymous:
        page = anonymous.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "ui/app.js" in page.text and "ui/vendor/leaflet/leaflet.js" in page.text
        for asset in (
            "ui/app.js",
            "ui/app.css",
            "ui/vendor/leaflet/leaflet.js",
            "ui/vendor/openseadragon/openseadragon.min.js",
        ):
            assert anonymous.get(f"/{asset}").status_code == 200, asset
        assert anonymous.get("/ui/vendor/leaflet/LICENSE").status_code == 200
        assert anonymous.get("/ui/../settings.py").status_code == 404
        assert anonymous.get("/models").status_code == 401, "the API itself still wants a key"


def test_events_follow_a_job_to_its_end(server, client, data_dir):
    job = submit(client, data_dir / "isbi2012" / "test" / "images" / "0.png", model="slow", tile=64).json()
    events = _events(client, job["id"])
    kinds = [k for k, _ in events]
    assert kinds[-1] == "end" and events[-1][1] == "succeeded"
    states = [json.loads(d) for k, d in events if k == "job"]
    done = [s["progress"]["tiles_done"] for s in states]
    assert len(states) >= 3 and done == sorted(done), "each change of progress, in order"
    assert {s["status"] for s in states} >= {"running", "succeeded"}
    final = client.get(f"/jobs/{job['id']}").json()
    assert states[-1] | {"timings": None} == final | {"timings": None}, "the same JSON as GET /jobs/{id}"
    # a finished job: one event, then the end
    assert [k for k, _ in _events(client, job["id"])] == ["job", "end"]


def test_tiles_of_a_georeferenced_job(server, client, data_dir):
    job = submit(client, data_dir / "geotiff" / "rgb-byte-tenth.tif", model="rgb-test").json()
    assert wait_for(client, job["id"])["status"] == "succeeded"
    assert job["links"]["tiles"] == f"/jobs/{job['id']}/tiles"
    tiles = client.get(job["links"]["tiles"]).json()
    assert tiles["kind"] == "xyz" and tiles["urls"]["input"] and len(tiles["classes"]) == 4
    west, south, east, north = tiles["bounds"]
    assert -79 < west < east < -76 and 23 < south < north < 26  # the Landsat scene, off the Bahamas
    z = tiles["max_zoom"]
    tile = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, z)
    for layer in ("input", "mask"):
        url = f"/jobs/{job['id']}/tiles/{layer}/{z}/{tile.x}/{tile.y}.png"
        answer = client.get(url)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        picture = np.asarray(Image.open(io.BytesIO(answer.content)))
        assert picture.shape == (256, 256, 4) and picture[..., 3].max() == 255
        assert "max-age" in answer.headers["cache-control"]
        again = client.get(url, headers={"If-None-Match": answer.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    hidden = client.get(f"/jobs/{job['id']}/tiles/mask/{z}/{tile.x}/{tile.y}.png?hide=0,1,2,3")
    assert np.asarray(Image.open(io.BytesIO(hidden.content)))[..., 3].max() == 0, "every class hidden"
    assert hidden.headers["etag"] != answer.headers["etag"]


def test_tile_errors_keys_and_ownership(server, client, data_dir):
    job = submit(client, data_dir / "isbi2012" / "test" / "images" / "1.png", model="grey-test").json()
    assert wait_for(client, job["id"])["status"] == "succeeded"
    base = f"/jobs/{job['id']}/tiles"
    assert client.get(base).json()["kind"] == "deepzoom"
    assert client.get(f"{base}/mask/9/1/1.png").status_code == 200
    for path, status, code in (
        (f"{base}/mask/9/2/0.png", 404, "no_such_tile"),  # 512 px: level 9 has tiles 0..1
        (f"{base}/mask/10/0/0.png", 422, "bad_tile"),  # no level 10
        (f"{base}/input/9/-1/0.png", 422, "bad_tile"),
        (f"{base}/mask/9/0/0.png?hide=red", 400, "bad_request"),
        (f"{base}/mask/nine/0/0.png", 400, "bad_request"),
        (f"{base}/probabilities/9/0/0.png", 400, "bad_request"),
    ):
        answer = client.get(path)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), path
    with server.client(KEY_B) as other:  # another key's job is not there
        for path in (base, f"{base}/mask/9/0/0.png", f"/jobs/{job['id']}/events"):
            assert other.get(path).json()["error"]["code"] == "job_not_found", path
            assert other.get(path).status_code == 404
    with server.client(key=None) as anonymous:
        assert anonymous.get(f"{base}/mask/9/0/0.png").status_code == 401
        assert anonymous.get(f"/jobs/{job['id']}/events").status_code == 401


def test_tiles_of_an_unfinished_job(server, client, data_dir):
    job = submit(client, data_dir / "isbi2012" / "test" / "images" / "2.png", model="slow", tile=64).json()
    answer = client.get(f"/jobs/{job['id']}/tiles/mask/0/0/0.png")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "not_ready"
    client.delete(f"/jobs/{job['id']}")
