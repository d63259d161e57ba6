"""DNS rebinding: a ``source`` host that resolves to an allowed address when the server checks it and to a
private one when it is read must not be read there. The server pins the address it checked; these tests
control what the check's resolver answers (``socket.getaddrinfo``, which the checks use) while GDAL's libcurl
resolves by itself, as an attacker's rebinding name would make it."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from tests.engine.conftest import test_architectures  # noqa: F401  (an autouse fixture)
from tests.engine.nets import checkpoint
from tests.engine.test_remote import RangeServer, mask_of, write_cog
from tileseg.engine.errors import UnreadableInputError
from tileseg.engine.io import InputRaster, pinning
from tileseg.engine.io.fetch import probe_range
from tileseg.engine.io.inputs import locate
from tileseg.engine.io.remote import RemoteUrl
from tileseg.jobs.errors import SourceNotAllowedError
from tileseg.jobs.intake import allowed_url, pin_source

PUBLIC = "1.1.1.1"  # what the check is told; nothing here answers on it


@pytest.fixture(autouse=True)
def no_pins(monkeypatch):
    monkeypatch.setenv("TILESEG_HTTP_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("TILESEG_HTTP_MAX_RETRY", "0")
    pinning.clear()
    yield
    pinning.clear()


@pytest.fixture
def trap(tmp_path):
    (tmp_path / "cogs").mkdir()
    write_cog(tmp_path / "cogs" / "scene.tif", 256)
    server = RangeServer(tmp_path)
    yield server
    server.close()


def resolver(monkeypatch, answers: dict[str, str]) -> None:
    """The checks' resolver: ``answers`` maps a host name to the one address it resolves to."""
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port or 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_a_host_checked_public_is_read_at_that_address_not_where_it_resolves_later(trap, monkeypatch):
    prefix = f"http://localhost:{trap.httpd.server_port}/cogs/"
    resolver(monkeypatch, {"localhost": PUBLIC})  # the check sees a public address ...
    remote = allowed_url(f"{prefix}scene.tif", [prefix])
    # ... GDAL's libcurl would find localhost at 127.0.0.1, the trap: the read must go to the address checked
    assert pinning.pinned(remote.url) == PUBLIC and PUBLIC in remote.gdal_path
    with pytest.raises(UnreadableInputError):
        InputRaster(locate(remote.url), checkpoint_spec(trap))
    with pytest.raises(UnreadableInputError):
        probe_range(remote)  # the service's own requests (Range probe, whole fetch) are pinned too
    assert trap.requests == 0


def test_a_pinned_host_is_read_with_its_own_name(trap, tmp_path):
    url = f"http://rebind.invalid:{trap.httpd.server_port}/cogs/scene.tif"  # a name no resolver knows
    pinning.pin(url, "127.0.0.1")
    model = checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb")
    remote = mask_of(model, url, tmp_path / "pinned.tif")
    np.testing.assert_array_equal(remote, mask_of(model, trap.root / "cogs" / "scene.tif", tmp_path / "local.tif"))
    assert probe_range(RemoteUrl(url)).ranges
    assert trap.requests >= 2 and set(trap.hosts) == {f"rebind.invalid:{trap.httpd.server_port}"}


def test_a_worker_checks_the_host_again_before_it_reads(trap, monkeypatch):
    prefix = f"http://scenes.example:{trap.httpd.server_port}/cogs/"
    resolver(monkeypatch, {"scenes.example": PUBLIC})
    pin_source(f"{prefix}scene.tif", [prefix])
    assert pinning.pinned(f"{prefix}scene.tif") == PUBLIC
    resolver(monkeypatch, {"scenes.example": "10.0.0.7"})  # rebound by the time the worker reads
    with pytest.raises(SourceNotAllowedError, match="non-public address"):
        pin_source(f"{prefix}scene.tif", [prefix])
    pin_source("/data/local.tif", [prefix])  # local paths and s3:// are not checked here
    assert trap.requests == 0


def checkpoint_spec(server: RangeServer):
    return checkpoint(server.root, "test-pool", bands=3, classes=4, name="rgb").spec
