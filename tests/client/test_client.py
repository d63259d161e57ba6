"""``tileseg.client.Client`` against the real server: the mask is the local command line's, cancel stops
the job, and each refusal is the typed error with the server's code."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from tests.api.conftest import KEY_B
from tests.client.conftest import local_mask, read
from tileseg.client import (
    Client,
    JobCanceled,
    ModelNotFound,
    NotFound,
    Refused,
    Unauthorized,
    Unreachable,
)


def test_the_clients_mask_is_the_local_commands(remote, weights, isbi, tmp_path):
    seen = []
    job = remote.segment(
        isbi, tmp_path / "remote.tif", "grey-test", vectors=tmp_path / "remote.geojson",
        progress=lambda done, total: seen.append((done, total)), tile=128,
    )  # fmt: skip
    expected = local_mask(weights, isbi, tmp_path / "local.tif", "grey-test", "--tile", "128")
    np.testing.assert_array_equal(read(tmp_path / "remote.tif"), expected)
    assert job["status"] == "succeeded" and job["options"]["tile"] == 128
    assert seen[-1] == (16, 16) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))
    assert (tmp_path / "remote.geojson").read_text().lstrip().startswith("{")
    assert not list(tmp_path.glob(".*.part"))  # the temporary files were renamed


def test_a_source_path_on_the_server_is_not_uploaded(remote, isbi, tmp_path, data_dir):
    relative = str(isbi.relative_to(data_dir))  # under the server's input roots, not a file here
    job = remote.wait(remote.submit(relative, "grey-test", tile=128))
    assert job["input"]["name"] == "1.png"
    remote.download(job, "mask", tmp_path / "mask.tif")
    assert read(tmp_path / "mask.tif").shape == (1, 512, 512)


def test_cancel_stops_the_job(remote, isbi):
    job = remote.submit(isbi, "slow", tile=16)  # 256 batches of 0.1 s
    deadline = time.monotonic() + 60
    while remote.job(job)["progress"]["tiles_done"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    remote.cancel(job)
    with pytest.raises(JobCanceled) as caught:
        remote.wait(job)
    assert remote.job(job)["status"] == "canceled" and "canceled" in str(caught.value)


def test_an_interrupted_segment_cancels_the_job_on_the_server(remote, isbi, tmp_path, monkeypatch):
    submitted = []
    real_submit = remote.submit

    def submit(*args, **kwargs):
        submitted.append(real_submit(*args, **kwargs))
        return submitted[-1]

    def interrupt(done, total):
        if done > 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(remote, "submit", submit)
    with pytest.raises(KeyboardInterrupt):
        remote.segment(isbi, tmp_path / "mask.tif", "slow", progress=interrupt, tile=16)
    assert remote.job(submitted[0])["status"] == "canceled"
    assert not (tmp_path / "mask.tif").exists()


def test_refusals_are_typed_errors_with_the_servers_code(server, remote, isbi, tmp_path):
    with pytest.raises(ModelNotFound) as caught:
        remote.submit(isbi, "no-such-model")
    assert caught.value.code == "model_not_found" and caught.value.status == 404
    assert isinstance(caught.value, LookupError)
    with pytest.raises(Refused) as caught:
        remote.submit("/srv/not/here.tif", "grey-test")  # no file here: a source, outside the server's roots
    assert caught.value.code == "source_not_allowed" and "no local file" in str(caught.value)
    with pytest.raises(Refused) as caught:
        remote.submit("http://169.254.169.254/latest/meta-data", "grey-test")
    assert caught.value.code == "source_not_allowed" and caught.value.status == 400
    with pytest.raises(Refused) as caught:
        remote.submit("/etc/hostname", "grey-test")  # a local file that is no raster: uploaded, then refused
    assert caught.value.code == "unreadable_input"
    with pytest.raises(Refused) as caught:
        remote.submit(isbi, "grey-test", tile="big")
    assert caught.value.code == "bad_request" and "tile" in caught.value.message
    with pytest.raises(NotFound):
        remote.job("00000000-0000-0000-0000-000000000000")
    with Client(server.url, api_key="wrong") as stranger, pytest.raises(Unauthorized) as caught:
        stranger.models()
    assert caught.value.code == "unauthorized" and isinstance(caught.value, PermissionError)
    with pytest.raises(FileNotFoundError):
        remote.submit(tmp_path / "missing.tif", "grey-test")


def test_another_keys_jobs_look_unknown(server, remote, isbi):
    job = remote.submit(isbi, "grey-test", tile=128)
    with Client(server.url, api_key=KEY_B) as other, pytest.raises(NotFound):
        other.job(job)


def test_models_lists_the_servers_cards(remote):
    names = [card["name"] for card in remote.models()]
    assert {"rgb-test", "grey-test", "slow"} <= set(names)
    assert remote.model("grey-test")["bands"] == 1
    with pytest.raises(ModelNotFound):
        remote.model("nope")


def test_no_server_is_an_unreachable_error():
    from tests.backends import free_port

    with Client(f"http://127.0.0.1:{free_port()}", retries=1, max_wait=0.01) as nobody:
        with pytest.raises(Unreachable, match="127.0.0.1"):
            nobody.models()
    with pytest.raises(ValueError, match="http"):
        Client("127.0.0.1:8000")


def test_importing_the_client_imports_no_torch():
    code = "import sys, tileseg.client; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
