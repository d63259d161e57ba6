"""A Python client of the tileseg service: ``tileseg segment`` run on a server, from a script or a notebook.

    from tileseg.client import Client

    client = Client("http://127.0.0.1:8000", api_key=None)
    client.segment("scene.tif", "mask.tif", model="unet-em", vectors="regions.gpkg")

A run is a job on the server: :meth:`Client.submit` uploads the image (streamed from disk) or names it as
``source`` (a URL, or a path under the server's input folders), :meth:`Client.wait` polls the job and reports
its tiles, :meth:`Client.download` streams each result into a temporary file beside the destination and
renames it, so that a broken transfer never leaves half a mask. :meth:`Client.segment` does all three and
cancels the job on the server when interrupted (Ctrl-C).

Only httpx and the standard library: a notebook calling a server needs no torch. The options are the
command line's (``tile=512``, ``roi="auto"``, ``blend="gaussian"``); the server checks them and answers
unknown or invalid ones with its own message.

Errors: every failure is a :class:`ClientError` carrying the server's ``code``, ``message`` and HTTP
``status``; each subclass also inherits the builtin it resembles (:class:`Unauthorized` is a
``PermissionError``, :class:`ModelNotFound` a ``LookupError``, :class:`Refused` a ``ValueError``).
"""

from __future__ import annotations

import enum
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

Job = dict[str, Any]
JobRef = Job | str
Progress = Callable[[int, int], None]

RESULTS = ("mask", "vectors", "probabilities")
VECTOR_FORMATS = {".gpkg": "gpkg", ".geojson": "geojson", ".json": "geojson"}
RETRY_STATUSES = frozenset({429, 503})
FINISHED = frozenset({"succeeded", "failed", "canceled", "expired"})


class ClientError(Exception):
    """The root of the client's errors: what went wrong, with the server's error ``code`` and ``message``
    (from its ``{"error": {"code", "message"}}`` body) and the HTTP ``status`` where there was an answer."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class Refused(ClientError, ValueError):
    """The server refused the request (a 4xx answer): a bad option, an input it cannot take, a refused source."""


class Unauthorized(Refused, PermissionError):
    """401: the server needs an API key, or does not know the one given."""


class ModelNotFound(Refused, LookupError):
    """404 ``model_not_found``: the server does not serve that model (``Client.models()`` lists those it does)."""


class NotFound(Refused, LookupError):
    """404 for anything else: an unknown job (another key's jobs look unknown), a result the job did not ask for."""


class ServerError(ClientError, RuntimeError):
    """A 5xx answer (after the retries, for 503), or an answer that is not the API's."""


class Unreachable(ClientError, ConnectionError):
    """No answer: the server is down, the address is wrong, or the connection broke (after the retries)."""


class JobFailed(ClientError, RuntimeError):
    """The job ended in ``failed`` (or its results ``expired``); ``code`` and ``message`` are the job's error."""


class JobCanceled(ClientError):
    """The job was canceled (by a ``DELETE``, from this client or another)."""


class Client:
    """A client of one tileseg server.

    Args:
        url: the server's address, e.g. ``http://127.0.0.1:8000`` (a path prefix behind a proxy is kept).
        api_key: sent as ``X-API-Key`` when the server has keys.
        timeout: seconds to wait for each answer (an upload or a download may take longer in all: this
            bounds each read and write, not the transfer).
        retries: how many times a request answered 429 or 503 is tried again (and a GET or DELETE that
            got no answer), waiting as ``Retry-After`` says, else 1, 2, 4 ... seconds.
        max_wait: the longest a single wait before a retry may be, whatever ``Retry-After`` asks.
        transport: an httpx transport (tests; a proxy or TLS setup goes here too).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        max_wait: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the server's URL must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/") + "/"
        self.retries = retries
        self.max_wait = max_wait
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the server's models

    def models(self) -> list[dict[str, Any]]:
        """The cards of the models the server serves (``GET /models``)."""
        return self._json("GET", "models")["models"]

    def model(self, name: str) -> dict[str, Any]:
        """One model's card, with how it runs on the server (``GET /models/{name}``).

        Raises:
            ModelNotFound: the server does not serve ``name``.
        """
        return self._json("GET", f"models/{name}")

    # jobs

    def submit(self, image: str | os.PathLike, model: str, **options: Any) -> Job:
        """Start a job: segment ``image`` with ``model`` and the command line's ``options``.

        Args:
            image: a local file (uploaded, streamed from disk); a URL, or a path under the server's input
                folders (TILESEG_INPUT_ROOTS), sent as ``source`` for the server to read itself. A ``Path``
                is always a local file; a string is one when such a file exists here.
            model: a model the server serves.
            options: the options of ``tileseg segment`` by their Python names (``tile=512``,
                ``pixel_size_policy="native"``), and ``vectors=True`` / ``probabilities=True`` to have the
                job make them.

        Returns:
            The job as ``GET /jobs/{id}`` shows it (``id``, ``status``, ``links``, ...).

        Raises:
            FileNotFoundError: ``image`` is a ``Path`` that does not exist.
            Refused (ModelNotFound, Unauthorized): the server's answer, with its code and message.
        """
        fields = {"model": model, **{k: _form_value(v) for k, v in options.items() if v is not None}}
        local = Path(image)
        if isinstance(image, os.PathLike) or ("://" not in str(image) and local.is_file()):
            if not local.is_file():
                raise FileNotFoundError(f"{local}: no such file")

            def upload() -> dict[str, Any]:
                # a fresh file object each try: a retry re-sends the file from its start
                return {"data": fields, "files": {"file": (local.name, open(local, "rb"))}}

            return self._json("POST", "segment", build=upload, retry_connect=False)
        parts = [(k, (None, v)) for k, v in {**fields, "source": str(image)}.items()]
        try:
            return self._json("POST", "segment", build=lambda: {"files": parts}, retry_connect=False)
        except Refused as err:
            if err.code == "source_not_allowed" and "://" not in str(image):
                raise Refused(f"{err.message} (and there is no local file {image!r})", err.code, err.status) from None
            raise

    def jobs(self, limit: int = 50, offset: int = 0) -> list[Job]:
        """This key's jobs, newest first (``GET /jobs``)."""
        return self._json("GET", f"jobs?limit={limit}&offset={offset}")["jobs"]

    def job(self, job: JobRef) -> Job:
        """The job now (``GET /jobs/{id}``)."""
        return self._json("GET", _job_path(job))

    def wait(self, job: JobRef, progress: Progress | None = None, poll: float = 0.5) -> Job:
        """Poll the job until it ends; ``progress(done, total)`` is called whenever the server's tile count moves.

        Returns:
            The succeeded job.

        Raises:
            JobFailed: the job failed (or its results expired), with the job's error code and message.
            JobCanceled: the job was canceled.
        """
        seen = None
        while True:
            current = self.job(job)
            counts = current["progress"]["tiles_done"], current["progress"]["tiles_total"]
            if progress is not None and counts != seen:
                progress(*counts)
                seen = counts
            status = current["status"]
            if status == "succeeded":
                return current
            if status in FINISHED:
                raise _job_error(current)
            time.sleep(poll)

    def cancel(self, job: JobRef) -> None:
        """Cancel a queued or running job (``DELETE /jobs/{id}``); on a finished one, remove its results."""
        self._request("DELETE", _job_path(job))

    def download(self, job: JobRef, what: str, path: str | os.PathLike, format: str | None = None) -> Path:
        """Write one result of a succeeded job to ``path``: streamed into a temporary file beside it, then
        renamed over it (a broken transfer leaves no partial file).

        Args:
            what: ``mask``, ``vectors`` or ``probabilities``.
            format: for vectors, ``gpkg`` or ``geojson`` (default: by the path's extension).

        Raises:
            ValueError: an unknown ``what``, or a vector file extension the server does not serve.
            Refused: the result does not exist (the job did not ask for it) or is not ready.
        """
        if what not in RESULTS:
            raise ValueError(f"what: one of {', '.join(RESULTS)}, not {what!r}")
        target = Path(path)
        route = f"{_job_path(job)}/{what}"
        if what == "vectors":
            route += f"?format={format or vector_format(target)}"
        response = self._request("GET", route, stream=True)
        with ExitStack() as stack:
            stack.callback(response.close)
            if response.is_redirect:  # results in object storage: a presigned URL, fetched without our key
                plain = stack.enter_context(httpx.Client(timeout=self._http.timeout))
                response = plain.send(plain.build_request("GET", response.headers["location"]), stream=True)
                stack.callback(response.close)
                if response.status_code >= 300:
                    raise ServerError(f"the result's storage answered HTTP {response.status_code}")
            fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent or ".")
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                os.replace(partial, target)
            except BaseException:
                os.unlink(partial)
                raise
        return target

    def segment(
        self,
        image: str | os.PathLike,
        output: str | os.PathLike,
        model: str,
        vectors: str | os.PathLike | None = None,
        probabilities: str | os.PathLike | None = None,
        progress: Progress | None = None,
        **options: Any,
    ) -> Job:
        """What ``tileseg segment`` does, on the server: submit, wait, and write the mask to ``output`` (and
        the polygons to ``vectors``, the per-class probabilities to ``probabilities``). Interrupted
        (KeyboardInterrupt) while the job runs, it cancels the job on the server and re-raises.

        Returns:
            The succeeded job (its ``result`` says what the run did).

        Raises:
            The errors of :meth:`submit`, :meth:`wait` and :meth:`download`.
        """
        if vectors is not None:
            vector_format(Path(vectors))  # before any upload
        asked = {"vectors": vectors is not None or None, "probabilities": probabilities is not None or None}
        job = self.submit(image, model, **options, **asked)
        try:
            done = self.wait(job, progress)
        except KeyboardInterrupt:
            self.cancel(job)
            raise
        self.download(done, "mask", output)
        if vectors is not None:
            self.download(done, "vectors", vectors)
        if probabilities is not None:
            self.download(done, "probabilities", probabilities)
        return done

    # the HTTP exchange

    def _json(self, method: str, route: str, **kwargs: Any) -> Any:
        response = self._request(method, route, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"{method} {route}: the answer is not JSON", status=response.status_code) from None

    def _request(
        self,
        method: str,
        route: str,
        build: Callable[[], dict[str, Any]] | None = None,
        stream: bool = False,
        retry_connect: bool = True,
    ) -> httpx.Response:
        """One request, tried again on 429/503 (and, if ``retry_connect``, when no answer came), waiting as the
        server's ``Retry-After`` says; an error answer raises the matching :class:`ClientError`.

        ``build`` makes the request's keyword arguments afresh for each try (an upload's file is re-opened).
        """
        url = urljoin(self.url, route)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            kwargs = build() if build else {}
            try:
                request = self._http.build_request(method, url, **kwargs)
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as err:
                if last or not retry_connect:
                    raise Unreachable(f"{method} {url}: {err or type(err).__name__}") from err
                time.sleep(min(2.0**attempt, self.max_wait))
                continue
            finally:
                _close_uploads(kwargs)
            if response.status_code in RETRY_STATUSES and not last:
                response.close()
                time.sleep(retry_after(response, attempt, self.max_wait))
                continue
            if response.status_code >= 400:
                if stream:
                    response.read()
                raise error_of(response)
            return response
        raise AssertionError("unreachable")  # the loop returns or raises on its last try


def retry_after(response: httpx.Response, attempt: int, max_wait: float) -> float:
    """Seconds to wait before trying again: the answer's ``Retry-After`` (seconds, or an HTTP date), else an
    exponential backoff of 1, 2, 4 ... seconds; at most ``max_wait``."""
    header = response.headers.get("Retry-After", "").strip()
    wait = 2.0**attempt
    if header.isdigit():
        wait = float(header)
    elif header:
        try:
            wait = parsedate_to_datetime(header).timestamp() - time.time()
        except (TypeError, ValueError):
            pass  # unparsable: the backoff
    return max(0.0, min(wait, max_wait))


def error_of(response: httpx.Response) -> ClientError:
    """The typed error of an error answer, with the server's code and message from its error body."""
    status = response.status_code
    try:
        body = response.json()
        detail: Mapping[str, Any] = (
            body["error"] if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
        )
    except ValueError:
        detail = {}
    code = detail.get("code")
    message = str(detail.get("message") or response.reason_phrase or f"HTTP {status}")
    text = f"{message} (HTTP {status}{f', {code}' if code else ''})"
    if status == 401:
        return Unauthorized(text, code, status)
    if status == 404:
        return (ModelNotFound if code == "model_not_found" else NotFound)(text, code, status)
    if 400 <= status < 500:
        return Refused(text, code, status)
    return ServerError(text, code, status)


def vector_format(path: Path) -> str:
    """The server's vector format for a destination file, by its extension.

    Raises:
        ValueError: an extension the server does not serve.
    """
    try:
        return VECTOR_FORMATS[path.suffix.lower()]
    except KeyError:
        choices = ", ".join(sorted(VECTOR_FORMATS))
        raise ValueError(f"{path}: a server sends polygons as {choices}; not {path.suffix or 'no extension'}") from None


def _job_error(job: Job) -> ClientError:
    error = job.get("error") or {}
    code, message = error.get("code"), error.get("message") or f"the job is {job['status']}"
    text = f"job {job['id']} {job['status']}: {message}" + (f" ({code})" if code else "")
    return (JobCanceled if job["status"] == "canceled" else JobFailed)(text, code)


def _close_uploads(kwargs: dict[str, Any]) -> None:
    files = kwargs.get("files")
    for part in files.values() if isinstance(files, dict) else ():
        if hasattr(part[1], "close"):
            part[1].close()


def _job_path(job: JobRef) -> str:
    return f"jobs/{job['id'] if isinstance(job, Mapping) else job}"


def _form_value(value: Any) -> str:
    """An option as a form field: booleans as the form reads them, enums by value, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


__all__ = [
    "Client",
    "ClientError",
    "JobCanceled",
    "JobFailed",
    "ModelNotFound",
    "NotFound",
    "Refused",
    "ServerError",
    "Unauthorized",
    "Unreachable",
    "error_of",
    "retry_after",
    "vector_format",
]
