"""Remote sources on the command line, in one process and in shards (``--workers 2``), against every kind of
server a user meets: an S3-compatible store with its own endpoint (moto, path-style), a server answering 503
to one request in five, one that redirects, one that ignores Range, and one that stops answering in the
middle of a body. Each mask equals the local file's, or the run fails with the documented clear error in
bounded time."""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from tests.engine.nets import checkpoint
from tests.engine.test_remote import RangeServer, write_cog
from tileseg.cli import cli

FIXED = ["--tile", "64", "--batch", "4", "--precision", "fp32", "--runtime", "torch", "--compile", "off", "-q"]
MODES = {"one process": [], "shards": ["--workers", "2"]}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 512^2 COG (blocks of 256: a header, then four tiles) and its folder."""
    root = tmp_path_factory.mktemp("remote-scene")
    write_cog(root / "scene.tif", 512, seed=5)
    return root


@pytest.fixture
def weights(tmp_path, monkeypatch):
    checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb-test", seed=4)
    monkeypatch.setenv("TILESEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TILESEG_HTTP_RETRY_DELAY", "0.05")


@pytest.fixture
def servers(scene):
    started: list[RangeServer] = []

    def start(**kwargs) -> RangeServer:
        started.append(RangeServer(scene, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


def segment(source, out, *flags):
    return CliRunner().invoke(cli, ["segment", str(source), str(out), "--model", "rgb-test", *FIXED, *flags])


def mask(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture
def local(scene, weights, tmp_path):
    answer = segment(scene / "scene.tif", tmp_path / "local.tif")
    assert answer.exit_code == 0, answer.output
    return mask(tmp_path / "local.tif")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_flaky_redirected_and_rangeless_servers_give_the_local_mask(mode, scene, local, servers, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the copy of a file without Range goes
    flaky, plain, moved = servers(fail_every=5), servers(ranges=False), servers()
    moved.redirects["/elsewhere/scene.tif"] = f"{flaky.url}/scene.tif"
    sources = {
        "flaky": f"{flaky.url}/scene.tif?sig=SECRET",
        "no range": f"{plain.url}/scene.tif",
        "redirect": f"{moved.url}/elsewhere/scene.tif",
    }
    for name, url in sources.items():
        out = tmp_path / f"{name.replace(' ', '-')}.tif"
        answer = segment(url, out, *MODES[mode])
        assert answer.exit_code == 0, (name, answer.output)
        np.testing.assert_array_equal(mask(out), local, err_msg=name)
    assert flaky.failures >= 1, "the flaky server must have failed some requests"
    assert plain.requests >= 2 and plain.bytes_served >= (scene / "scene.tif").stat().st_size  # fetched whole
    assert not list(scratch.iterdir()), "the temporary copy is removed"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_s3_with_its_own_endpoint_gives_the_local_mask(mode, scene, local, s3, tmp_path):
    bucket = s3.bucket()
    s3.client().upload_file(str(scene / "scene.tif"), bucket, "a/scene.tif")
    answer = segment(f"s3://{bucket}/a/scene.tif", tmp_path / "s3.tif", *MODES[mode])
    assert answer.exit_code == 0, answer.output
    np.testing.assert_array_equal(mask(tmp_path / "s3.tif"), local)


def test_a_rangeless_file_over_the_fetch_limit_is_refused_naming_range(scene, weights, servers, monkeypatch, tmp_path):
    plain = servers(ranges=False)
    monkeypatch.setenv("TILESEG_FETCH_MAX_BYTES", "100000")
    answer = segment(f"{plain.url}/scene.tif", tmp_path / "out.tif")
    assert answer.exit_code == 1
    assert "does not support Range requests" in answer.output and "not recognized" not in answer.output
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("stall_from", [0, 20000], ids=["at once", "after the header"])
def test_a_source_that_stops_answering_fails_in_bounded_time(
    scene, weights, servers, monkeypatch, tmp_path, stall_from
):
    stalled = servers(stall_from=stall_from)  # headers and 10 bytes, then nothing
    monkeypatch.setenv("TILESEG_HTTP_READ_TIMEOUT", "1")
    monkeypatch.setenv("TILESEG_HTTP_MAX_RETRY", "1")
    started = time.monotonic()
    answer = segment(f"{stalled.url}/scene.tif?token=SECRET", tmp_path / "out.tif")
    seconds = time.monotonic() - started
    assert answer.exit_code == 1 and stalled.stalls >= 1
    assert "stopped answering" in answer.output and "scene.tif?***" in answer.output, answer.output
    assert "SECRET" not in answer.output
    assert seconds < 60, f"{seconds:.0f} s"
