"""``tileseg segment --server`` and ``tileseg models --server`` against the real server: the same files as a
local run, Ctrl-C cancels the job there, and refusals are one line ``error: ...`` with exit 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.api.conftest import KEY_A
from tests.client.conftest import local_mask, read, run_cli
from tests.conftest import REPO


def test_segment_with_server_writes_the_local_runs_mask(server, weights, isbi, tmp_path):
    result = run_cli(
        "segment", str(isbi), str(tmp_path / "remote.tif"), "--model", "grey-test", "--tile", "128",
        "--vectors", str(tmp_path / "remote.gpkg"), "--server", server.url, "--api-key", KEY_A,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = local_mask(weights, isbi, tmp_path / "local.tif", "grey-test", "--tile", "128")
    np.testing.assert_array_equal(read(tmp_path / "remote.tif"), expected)
    assert (tmp_path / "remote.gpkg").stat().st_size > 0
    assert "16 tiles" in result.output and server.url in result.output


def test_the_server_and_key_come_from_the_environment(server, tmp_path, isbi):
    env = {"TILESEG_SERVER": server.url, "TILESEG_API_KEY": KEY_A}
    result = run_cli("segment", str(isbi), str(tmp_path / "m.tif"), "--model", "grey-test", "-q", env=env)
    assert result.exit_code == 0, result.output
    assert read(tmp_path / "m.tif").shape == (1, 512, 512)


def test_models_with_server_lists_the_servers_models(server):
    table = run_cli("models", "--server", server.url, "--api-key", KEY_A)
    assert table.exit_code == 0, table.output
    assert table.output.startswith("name") and "grey-test" in table.output and "slow" in table.output
    as_json = run_cli("models", "--json", "--server", server.url, "--api-key", KEY_A)
    assert {"rgb-test", "grey-test"} <= {m["name"] for m in json.loads(as_json.output)["models"]}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "no-such-model"], "no-such-model"),
        (["--model", "grey-test", "--api-key", "wrong"], "not one of this server's keys"),
        (["--model", "grey-test", "--roi", "regions.gpkg"], "roi=auto only"),  # the server refuses, a local run not
    ],
    ids=["bad-model", "wrong-key", "option-the-server-refuses"],
)
def test_refusals_are_one_line_errors(server, isbi, tmp_path, args, message):
    key = [] if "--api-key" in args else ["--api-key", KEY_A]
    result = run_cli("segment", str(isbi), str(tmp_path / "m.tif"), *args, "--server", server.url, *key)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines()[-1].startswith("error: ") and message in result.output
    assert not (tmp_path / "m.tif").exists()


def test_a_refused_source_is_one_line_error(server, tmp_path):
    result = run_cli(
        "segment", "/etc/hostname", str(tmp_path / "m.tif"), "--model", "grey-test",
        "--server", server.url, "--api-key", KEY_A,
    )  # fmt: skip
    # /etc/hostname is a local file: uploaded, and refused as no raster; a path that is no file here is a source
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines()[-1].startswith("error: ") and "unreadable_input" in result.output
    missing = run_cli(
        "segment", "/no/such.tif", str(tmp_path / "m.tif"), "--model", "grey-test",
        "--server", server.url, "--api-key", KEY_A,
    )  # fmt: skip
    assert missing.exit_code == 1 and "source_not_allowed" in missing.output and "no local file" in missing.output


@pytest.mark.parametrize("option", [["--batch", "8"], ["--device", "cpu"], ["--weights", "x.safetensors"]])
def test_a_local_only_option_with_server_is_a_usage_error(server, isbi, tmp_path, option):
    model = [] if option[0] == "--weights" else ["--model", "grey-test"]
    result = run_cli("segment", str(isbi), str(tmp_path / "m.tif"), *model, *option, "--server", server.url)
    assert result.exit_code == 2 and option[0] in result.output and "not with --server" in result.output


def test_ctrl_c_cancels_the_job_on_the_server(server, isbi, tmp_path, remote):
    before = {j["id"] for j in remote.jobs()}
    env = {**os.environ, "TILESEG_SERVER": server.url, "TILESEG_API_KEY": KEY_A}
    tileseg = str(Path(sys.executable).parent / "tileseg")
    process = subprocess.Popen(
        [tileseg, "segment", str(isbi), str(tmp_path / "m.tif"), "--model", "slow", "--tile", "16"],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    running: list[dict] = []
    while not running and time.monotonic() < deadline:
        running = [j for j in remote.jobs() if j["id"] not in before and j["progress"]["tiles_done"] > 0]
        time.sleep(0.2)
    assert running, "the job did not start"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "canceled on the server" in err and "Traceback" not in err
    assert remote.job(running[0])["status"] == "canceled"
    assert not (tmp_path / "m.tif").exists()
