"""A real HTTP receiver of callbacks on loopback: it records every delivery (headers and exact body bytes),
checks its signature with the secret, and answers 500 to the first ``fail_first`` deliveries (or to all while
``failing`` is set) to make the server retry."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "callback-secret-0123456789"


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def signed(self) -> bool:
        """Whether X-Tileseg-Signature is the HMAC-SHA256 of the exact body with the secret (as a receiver checks)."""
        expected = "sha256=" + hmac.new(SECRET.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-tileseg-signature", ""), expected)


class Receiver:
    """``ThreadingHTTPServer`` on 127.0.0.1 in a thread; ``url(path)`` is where to point callbacks."""

    def __init__(self, fail_first: int = 0):
        self.fail_first = fail_first
        self.failing = False
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    fail = receiver.failing or len(receiver.deliveries) < receiver.fail_first
                    status = 500 if fail else 204
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.deliveries.append(Delivery(self.path, headers, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    @property
    def allow(self) -> str:
        """The TILESEG_CALLBACK_ALLOW prefix of its /hooks/ folder."""
        return f"{self.base}/hooks/"

    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.answered < 300]

    def wait(self, count: int, timeout: float = 60, accepted: bool = True) -> list[Delivery]:
        """Wait until ``count`` deliveries (accepted ones, or any) have come; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seen = [d for d in self.deliveries if d.answered < 300 or not accepted]
            if len(seen) >= count:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(seen)} of {count} deliveries after {timeout} s: {self.deliveries}")
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
