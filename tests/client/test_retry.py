"""Retries on 429 and 503 honour ``Retry-After``: a tiny real HTTP server on loopback answers 503 (or 429)
with it a given number of times, then answers as the API does."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tileseg.client import Client, Refused, ServerError, retry_after


class Flaky(ThreadingHTTPServer):
    """Answers ``status`` with ``Retry-After: retry_after`` ``failures`` times, then ``{"models": []}``."""

    def __init__(self, failures: int, status: int = 503, retry_after: str | None = "1"):
        super().__init__(("127.0.0.1", 0), Handler)
        self.failures, self.status, self.retry_after = failures, status, retry_after
        self.times: list[float] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Flaky

    def do_GET(self) -> None:  # the standard library names the handler so
        self.server.times.append(time.monotonic())
        failing = len(self.server.times) <= self.server.failures
        body = {"error": {"code": "busy", "message": "try later"}} if failing else {"models": []}
        data = json.dumps(body).encode()
        self.send_response(self.server.status if failing else 200)
        if failing and self.server.retry_after is not None:
            self.send_header("Retry-After", self.server.retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky():
    servers = []

    def start(*args, **kwargs) -> Flaky:
        server = Flaky(*args, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [503, 429])
def test_a_busy_answer_is_retried_after_the_servers_delay(flaky, status):
    server = flaky(failures=1, status=status, retry_after="1")
    with Client(server.url) as client:
        assert client.models() == []
    assert len(server.times) == 2
    assert server.times[1] - server.times[0] >= 0.95  # waited as Retry-After said


def test_retries_are_bounded_and_end_in_the_servers_error(flaky):
    server = flaky(failures=10, retry_after="0")
    with Client(server.url, retries=2) as client, pytest.raises(ServerError) as caught:
        client.models()
    assert len(server.times) == 3
    assert caught.value.code == "busy" and caught.value.status == 503


def test_a_429_after_the_retries_is_a_refusal(flaky):
    server = flaky(failures=10, status=429, retry_after="0")
    with Client(server.url, retries=1) as client, pytest.raises(Refused) as caught:
        client.models()
    assert caught.value.status == 429 and "try later" in str(caught.value)


def test_the_wait_is_capped_at_max_wait(flaky):
    server = flaky(failures=1, retry_after="3600")
    start = time.monotonic()
    with Client(server.url, max_wait=0.2) as client:
        client.models()
    assert time.monotonic() - start < 5


def test_retry_after_values():
    import httpx

    def answer(value):
        return httpx.Response(503, headers={"Retry-After": value} if value is not None else {})

    assert retry_after(answer("7"), 0, 60) == 7
    assert retry_after(answer("7"), 0, 5) == 5
    assert retry_after(answer(None), 2, 60) == 4  # backoff 1, 2, 4 ...
    assert retry_after(answer("Thu, 01 Jan 1970 00:00:00 GMT"), 0, 60) == 0  # a date past
    assert retry_after(answer("soon"), 0, 60) == 1
