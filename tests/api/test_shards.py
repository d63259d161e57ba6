"""``shards`` on a server that runs its jobs itself (``TILESEG_MODE=embedded``): more than one is refused
with a clear 400 before any job exists; one, or none, runs the job whole. (Sharded runs on queue workers:
``tests/scale/test_shards.py``.)"""

from __future__ import annotations

from tests.api.conftest import submit, wait_for


def test_shards_need_queue_workers(client, data_dir):
    image = data_dir / "geotiff" / "rgb-byte-tenth.tif"
    before = client.get("/jobs", params={"limit": 500}).json()["jobs"]
    refused = submit(client, image, shards=2)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "shards_need_queue"
    assert "shards=2" in error["message"] and "TILESEG_MODE=queue" in error["message"]
    assert client.get("/jobs", params={"limit": 500}).json()["jobs"] == before  # no job was made
    zero = submit(client, image, shards=0)
    assert zero.status_code == 400 and zero.json()["error"]["code"] == "bad_request"
    assert "shards" in zero.json()["error"]["message"]

    whole = submit(client, image, shards=1)
    assert whole.status_code == 202, whole.text
    job = wait_for(client, whole.json()["id"])
    assert job["status"] == "succeeded" and job["options"]["shards"] == 1 and job["shards"] is None
    automatic = wait_for(client, submit(client, image).json()["id"])
    assert automatic["status"] == "succeeded" and automatic["options"]["shards"] is None
    assert automatic["shards"] is None  # the automatic default never shards here


def test_the_form_declares_shards(client):
    schema = client.get("/openapi.json").json()
    form = schema["paths"]["/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["shards"]["type"] == "integer" and form["properties"]["shards"]["minimum"] == 1


def test_the_json_option_is_refused_the_same_way(client, data_dir):
    href = str(data_dir / "geotiff" / "rgb-byte-tenth.tif")
    answer = client.post(
        "/ogc/processes/segment/execution",
        json={"inputs": {"image": {"href": href}, "model": "rgb-test", "shards": 3}},
        headers={"Prefer": "respond-async"},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["type"].endswith("shards_need_queue") and "TILESEG_MODE=queue" in answer.json()["detail"]
