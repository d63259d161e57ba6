"""A tileseg server, reached with the standard library only.

QGIS runs plug-ins in the system's Python, where the project's own client (and httpx) is not installed, so
this module speaks the server's HTTP contract with ``http.client``: ``GET /models``, ``POST /segment`` as
``multipart/form-data`` (the file streamed from disk in chunks, never read whole), ``GET /jobs/{id}``,
``DELETE /jobs/{id}`` and the result downloads. Every answer the server refuses carries
``{"error": {"code", "message"}}``; it becomes a :class:`ServerError` with that message.

Nothing here knows QGIS: ``canceled`` and ``progress`` are plain callables, so the algorithm passes its
feedback's and a test could pass its own.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
import uuid
from collections.abc import Callable
from urllib.parse import quote, urlsplit

CHUNK = 1 << 20  # upload and download in 1 MiB pieces: memory stays flat, cancel is checked often
RETRY_STATUSES = (429, 503)  # the server is busy (its queue is full, or it is starting): try again later
MAX_RETRIES = 5
MAX_RETRY_WAIT = 30.0  # seconds; a longer Retry-After is still capped, so cancel stays responsive

Check = Callable[[], bool]
Report = Callable[[float], None]


class RemoteError(Exception):
    """The server could not be reached, or answered something this client does not understand."""


class ServerError(RemoteError):
    """The server refused a request; ``code`` and ``message`` are those of its error body."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Canceled(RemoteError):
    """The caller canceled while a request was under way."""


class Remote:
    """One tileseg server: ``url`` is its root (``http(s)://host[:port][/prefix]``), ``api_key`` goes in
    ``X-API-Key`` when given."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"the server URL must look like http://host:port, not {url!r}")
        self.url = url.strip().rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout

    # ---- the server's resources

    def models(self) -> list[dict]:
        """The served models' cards (``GET /models``)."""
        return self._json("GET", self.prefix + "/models")["models"]

    def job(self, job_id: str) -> dict:
        """The job as ``GET /jobs/{id}`` shows it."""
        return self._json("GET", f"{self.prefix}/jobs/{quote(job_id)}")

    def cancel(self, job_id: str) -> None:
        """Cancel the job on the server (``DELETE /jobs/{id}``)."""
        self._send("DELETE", f"{self.prefix}/jobs/{quote(job_id)}")

    def submit(
        self,
        fields: dict[str, str],
        path: str | None = None,
        canceled: Check = lambda: False,
        progress: Report = lambda fraction: None,
    ) -> dict:
        """``POST /segment`` with the form ``fields`` (``model``, options, or ``source``) and, when ``path``
        is given, that file as the upload. Returns the new job.

        Raises:
            ServerError: the server refused the job (its message says why).
            Canceled: ``canceled()`` became true during the upload.
        """
        return self._json("POST", self.prefix + "/segment", form=(fields, path), canceled=canceled, progress=progress)

    def download(
        self, link: str, destination: str, canceled: Check = lambda: False, progress: Report = lambda f: None
    ) -> None:
        """Write the result at ``link`` (a job's link, e.g. ``/jobs/{id}/mask``) to ``destination``; a
        partial file is removed when it fails."""
        partial = destination + ".part"
        try:
            with open(partial, "wb") as out:
                self._send("GET", link, sink=out, canceled=canceled, progress=progress)
            os.replace(partial, destination)
        finally:
            if os.path.exists(partial):
                os.remove(partial)

    # ---- HTTP

    def _json(self, method: str, path: str, **kwargs) -> dict:
        body = self._send(method, path, **kwargs)
        try:
            return json.loads(body)
        except ValueError:
            raise RemoteError(f"{self.url} answered {method} {path} with something that is not JSON") from None

    def _send(
        self,
        method: str,
        path: str,
        form=None,
        sink=None,
        canceled: Check = lambda: False,
        progress: Report = lambda fraction: None,
    ) -> bytes:
        """One request, tried again (at most MAX_RETRIES times) while the server answers 429 or 503, waiting
        as its Retry-After asks. The body is returned, or streamed into ``sink`` when given."""
        attempt = 0
        while True:
            attempt += 1
            connection = self._connect()
            try:
                if form is not None:
                    self._post_form(connection, path, *form, canceled=canceled, progress=progress)
                else:
                    connection.request(method, path, headers=self._headers())
                response = connection.getresponse()
                if response.status in RETRY_STATUSES and attempt <= MAX_RETRIES:
                    wait = _retry_after(response.getheader("Retry-After"))
                    response.read()
                    _sleep(wait, canceled)
                    continue
                if response.status >= 400:
                    raise _server_error(response.status, response.read())
                if sink is not None and response.status in REDIRECTS and response.getheader("Location"):
                    # results kept in object storage: a presigned URL, fetched without the API key
                    _fetch(response.getheader("Location"), sink, canceled, progress, self.timeout)
                    return b""
                if sink is None:
                    return response.read()
                _copy(response, sink, canceled, progress)
                return b""
            except (OSError, http.client.HTTPException) as err:
                raise RemoteError(f"cannot reach the tileseg server at {self.url}: {err}") from None
            finally:
                connection.close()

    def _connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "tileseg-qgis"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        return headers

    def _post_form(
        self,
        connection: http.client.HTTPConnection,
        path: str,
        fields: dict[str, str],
        upload: str | None,
        canceled: Check,
        progress: Report,
    ) -> None:
        """Send a multipart body whose length is known in advance (so no chunked encoding): the text parts,
        then the file read from disk one CHUNK at a time."""
        boundary = "tileseg-" + uuid.uuid4().hex
        head = b"".join(_text_part(boundary, name, value) for name, value in fields.items())
        size = 0
        if upload is not None:
            head += _file_part_header(boundary, os.path.basename(upload))
            size = os.path.getsize(upload)
        tail = (b"\r\n" if upload is not None else b"") + f"--{boundary}--\r\n".encode()
        connection.putrequest("POST", path)
        for name, value in self._headers().items():
            connection.putheader(name, value)
        connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        connection.putheader("Content-Length", str(len(head) + size + len(tail)))
        connection.endheaders()
        connection.send(head)
        if upload is not None:
            sent = 0
            with open(upload, "rb") as source:
                while True:
                    if canceled():
                        raise Canceled("canceled during the upload")
                    chunk = source.read(CHUNK)
                    if not chunk:
                        break
                    connection.send(chunk)
                    sent += len(chunk)
                    progress(sent / size if size else 1.0)
        connection.send(tail)


def _text_part(boundary: str, name: str, value: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value.encode("utf-8")
        + b"\r\n"
    )


def _file_part_header(boundary: str, filename: str) -> bytes:
    # quotes and line breaks would end the header early; the server shows the name and never uses it as a path
    safe = filename.replace("\\", "_").replace('"', "_").replace("\r", "_").replace("\n", "_")
    return (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{safe}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


REDIRECTS = (301, 302, 303, 307, 308)


def _fetch(url: str, sink, canceled: Check, progress: Report, timeout: float) -> None:
    """GET ``url`` (the store's presigned URL: it carries its own permission, so no header of ours goes)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = connection.getresponse()
        if response.status >= 300:
            raise RemoteError(f"the result's storage answered HTTP {response.status}")
        _copy(response, sink, canceled, progress)
    finally:
        connection.close()


def _copy(response: http.client.HTTPResponse, sink, canceled: Check, progress: Report) -> None:
    total = int(response.getheader("Content-Length") or 0)
    done = 0
    while True:
        if canceled():
            raise Canceled("canceled during the download")
        chunk = response.read(CHUNK)
        if not chunk:
            break
        sink.write(chunk)
        done += len(chunk)
        if total:
            progress(done / total)


def _server_error(status: int, body: bytes) -> ServerError:
    """The server's error body as an exception; a body that is not the server's (a proxy's page) still
    gives the status."""
    try:
        error = json.loads(body)["error"]
        return ServerError(status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()[:300]
        return ServerError(status, "http_error", f"the server answered HTTP {status}: {text or 'no details'}")


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (seconds only; the server sends no dates), 1 s by default."""
    try:
        return min(max(float(value or 1), 0.0), MAX_RETRY_WAIT)
    except ValueError:
        return 1.0


def _sleep(seconds: float, canceled: Check) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if canceled():
            raise Canceled("canceled while waiting for the server")
        time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
