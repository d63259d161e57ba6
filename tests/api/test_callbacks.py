"""Callbacks on a real embedded server, posted to a real receiver on loopback: signed with the secret over the
exact body, retried with backoff when the receiver fails, kept across a restart of the server (at least once),
refused with 400 before any request when the URL is not under TILESEG_CALLBACK_ALLOW; a batch's jobs and the
batch itself; OGC API - Processes' ``subscriber`` (successUri, failedUri)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.api.conftest import Server, submit, wait_for
from tests.api.receiver import SECRET, Receiver
from tests.conftest import write_raster


@pytest.fixture
def receiver():
    hooks = Receiver()
    yield hooks
    hooks.close()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, inputs_root) -> dict[str, str]:
    rng = np.random.default_rng(11)
    return {
        "rgb": str(write_raster(inputs_root / "hook-rgb.tif", rng.integers(0, 256, (3, 64, 64), np.uint8))),
        "grey": str(write_raster(inputs_root / "hook-grey.tif", rng.integers(0, 256, (1, 256, 256), np.uint8))),
    }


def hooked(start_server, receiver, data=None, **settings) -> Server:
    return start_server(data, callback_allow=receiver.allow, callback_secret=SECRET, **settings)


def test_a_job_callback_is_signed_and_retried_until_it_is_taken(start_server, receiver, scenes):
    receiver.fail_first = 2  # 500, 500, then 204: retried after 1 s and 2 s
    server = hooked(start_server, receiver)
    with server.client() as client:
        answer = submit(client, source=scenes["rgb"], callback=receiver.url("/hooks/job?token=SECRET"))
        assert answer.status_code == 202, answer.text
        job = wait_for(client, answer.json()["id"])
        assert job["status"] == "succeeded"
        receiver.wait(1)
        tries = receiver.deliveries
        assert [d.answered for d in tries] == [500, 500, 204]
        assert len({d.headers["x-tileseg-delivery"] for d in tries}) == 1  # one delivery, tried three times
        assert len({d.body for d in tries}) == 1  # the same bytes each time
        assert all(d.signed for d in tries) and all(d.path == "/hooks/job?token=SECRET" for d in tries)
        body = tries[-1].json
        assert body["delivery"] == tries[-1].headers["x-tileseg-delivery"] and body["event"] == "succeeded"
        assert tries[-1].headers["x-tileseg-event"] == "succeeded"
        shown = client.get(f"/jobs/{job['id']}").json()
        assert {k: v for k, v in body.items() if k not in ("delivery", "event")} == shown
    forged = type(tries[-1])(tries[-1].path, tries[-1].headers, tries[-1].body.replace(b"succeeded", b"failed"), 204)
    assert not forged.signed


OFF_THE_LIST = (
    "{base}/elsewhere/x",  # another folder on the receiver
    "http://localhost:{port}/hooks/x",  # the same server by another name: not the listed host
    "{base}/hooks/../elsewhere/x",
    "ftp://127.0.0.1:{port}/hooks/x",
    "http://user:pw@127.0.0.1:{port}/hooks/x",
)


def test_a_callback_off_the_allow_list_is_refused_before_any_request(start_server, receiver, scenes):
    server = hooked(start_server, receiver)  # one server for every URL: each refusal leaves nothing behind
    with server.client() as client:
        for where in OFF_THE_LIST:
            url = where.format(base=receiver.base, port=receiver.port)
            answer = submit(client, source=scenes["rgb"], callback=url)
            assert answer.status_code == 400, (url, answer.text)
            assert answer.json()["error"]["code"] == "callback_not_allowed", url
            batch = client.post("/batches", json={"model": "rgb-test", "sources": [scenes["rgb"]], "callback": url})
            assert batch.status_code == 400 and batch.json()["error"]["code"] == "callback_not_allowed", url
            subscriber = {"successUri": url}
            execute = client.post(
                "/ogc/processes/segment/execution",
                json={"inputs": {"image": {"href": scenes["rgb"]}, "model": "rgb-test"}, "subscriber": subscriber},
            )
            assert execute.status_code == 400 and execute.json()["type"].endswith("callback_not_allowed"), url
            assert client.get("/jobs").json()["jobs"] == [], url
    time.sleep(1.5)
    assert receiver.deliveries == []


def test_a_server_without_the_allow_list_takes_no_callback(client, receiver, scenes):
    answer = submit(client, source=scenes["rgb"], callback=receiver.url("/hooks/x"))
    assert answer.status_code == 400 and "TILESEG_CALLBACK_ALLOW is not set" in answer.json()["error"]["message"]


def test_a_delivery_survives_a_restart_of_the_server(start_server, receiver, scenes, tmp_path):
    receiver.failing = True
    data = tmp_path / "restart-data"
    server = hooked(start_server, receiver, data)
    with server.client() as client:
        answer = submit(client, source=scenes["rgb"], callback=receiver.url("/hooks/restart"))
        job = wait_for(client, answer.json()["id"])
    receiver.wait(1, accepted=False)  # tried once at least, refused
    server.stop()
    refused = {d.headers["x-tileseg-delivery"] for d in receiver.deliveries}
    receiver.failing = False
    again = hooked(start_server, receiver, data)
    taken = receiver.wait(1, timeout=60)[0]
    assert taken.headers["x-tileseg-delivery"] in refused and taken.signed
    assert taken.json["id"] == job["id"] and taken.json["status"] == "succeeded"
    assert again.process.poll() is None


def test_a_batch_calls_back_for_each_job_then_for_itself(start_server, receiver, scenes):
    server = hooked(start_server, receiver)
    with server.client() as client:
        answer = client.post(
            "/batches",
            json={"model": "rgb-test", "sources": [scenes["rgb"]] * 2, "callback": receiver.url("/hooks/batch")},
        )
        assert answer.status_code == 202, answer.text
        created = answer.json()
        got = receiver.wait(3)
    assert all(d.signed for d in got)
    events = [d.json["event"] for d in got]
    assert sorted(events[:2]) == ["succeeded", "succeeded"] and events[2] == "finished"
    assert {d.json["id"] for d in got[:2]} == set(created["job_ids"])
    batch = got[2].json
    assert batch["id"] == created["id"] and batch["status"] == "succeeded" and batch["counts"]["succeeded"] == 2
    assert len({d.headers["x-tileseg-delivery"] for d in got}) == 3


def test_ogc_subscriber_success_and_failure(start_server, receiver, scenes, inputs_root):
    server = hooked(start_server, receiver)
    doomed = inputs_root / "hook-doomed.tif"
    write_raster(doomed, np.zeros((3, 64, 64), np.uint8))
    subscriber = {"successUri": receiver.url("/hooks/ok"), "failedUri": receiver.url("/hooks/failed")}
    with server.client() as client:
        # the one worker busy with a slow job, so that the doomed job waits in the queue while its file goes
        blocker = submit(client, model="slow", source=scenes["grey"], tile=16).json()
        wait_for(client, blocker["id"], until=("running",))
        execute = client.post(
            "/ogc/processes/segment/execution",
            headers={"Prefer": "respond-async"},
            json={"inputs": {"image": {"href": str(doomed)}, "model": "rgb-test"}, "subscriber": subscriber},
        )
        assert execute.status_code == 201, execute.text
        doomed.unlink()
        client.delete(f"/jobs/{blocker['id']}")
        failed_id = execute.json()["jobID"]
        assert wait_for(client, failed_id)["status"] == "failed"
        execute = client.post(
            "/ogc/processes/segment/execution",
            headers={"Prefer": "respond-async"},
            json={"inputs": {"image": {"href": scenes["rgb"]}, "model": "rgb-test"}, "subscriber": subscriber},
        )
        assert execute.status_code == 201, execute.text
        ok_id = execute.json()["jobID"]
        got = receiver.wait(2)
    by_path = {d.path: d for d in got}
    assert by_path["/hooks/failed"].json["id"] == failed_id and by_path["/hooks/failed"].json["status"] == "failed"
    assert by_path["/hooks/ok"].json["id"] == ok_id and by_path["/hooks/ok"].json["status"] == "succeeded"
    assert all(d.signed for d in got)
