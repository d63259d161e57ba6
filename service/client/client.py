"""The :class:`Client` of one server: its models, and the jobs that segment images on it, submitted, waited for,
canceled and downloaded (:mod:`tileseg.client` tells how a run goes); the requests themselves are
:class:`~tileseg.client.exchange.Exchange`'s."""

from __future__ import annotations

import enum
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from tileseg.client.errors import ClientError, JobCanceled, JobFailed, Refused, ServerError
from tileseg.client.exchange import Exchange

Job = dict[str, Any]
JobRef = Job | str
Progress = Callable[[int, int], None]

RESULTS = ("mask", "vectors", "probabilities", "instances", "objects")
VECTOR_FORMATS = {".gpkg": "gpkg", ".geojson": "geojson", ".json": "geojson"}
FINISHED = frozenset({"succeeded", "failed", "canceled", "expired"})


class Client(Exchange):
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
                ``pixel_size_policy="native"``), and ``vectors=True`` / ``probabilities=True`` /
                ``instances=True`` (the objects of an instance model) to have the job make them.

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

    # batches

    def submit_batch(
        self,
        sources: list[str] | None,
        model: str,
        stac_search: Mapping[str, Any] | None = None,
        callback: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Start a batch: one job per source, each read by the server as ``submit``'s ``source`` (``POST /batches``).

        Args:
            sources: paths under the server's input folders, or URLs it may read; or None with ``stac_search``.
            model: a model the server serves.
            stac_search: instead of ``sources``, a STAC API search (``url``, ``collections``, ``bbox``,
                ``datetime``, ``query``, ``limit``) whose items' assets become the sources.
            callback: a URL the server posts each job's status to when it ends, then the batch's.
            options: the jobs' options, as :meth:`submit` takes them.

        Returns:
            ``{"id", "status", "size", "job_ids", "links"}``.

        Raises:
            Refused: a source the server refuses (nothing is queued), or too many jobs (``too_many_jobs``).
        """
        body: dict[str, Any] = {"model": model, **{k: _json_value(v) for k, v in options.items() if v is not None}}
        if sources is not None:
            body["sources"] = [str(s) for s in sources]
        if stac_search is not None:
            body["stac_search"] = dict(stac_search)
        if callback is not None:
            body["callback"] = callback
        return self._json("POST", "batches", build=lambda: {"json": body}, retry_connect=False)

    def batch(self, batch: JobRef, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """The batch now (``GET /batches/{id}``): its status, ``counts`` by job status, a page of its jobs."""
        return self._json("GET", f"{_batch_path(batch)}?limit={limit}&offset={offset}")

    def cancel_batch(self, batch: JobRef) -> None:
        """Cancel every job of the batch that has not ended (``DELETE /batches/{id}``)."""
        self._request("DELETE", _batch_path(batch))

    def download(self, job: JobRef, what: str, path: str | os.PathLike, format: str | None = None) -> Path:
        """Write one result of a succeeded job to ``path``: streamed into a temporary file beside it, then
        renamed over it (a broken transfer leaves no partial file).

        Args:
            what: ``mask``, ``vectors``, ``probabilities``, ``instances`` (the objects' label GeoTIFF) or
                ``objects`` (their table, CSV).
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
        instances: str | os.PathLike | None = None,
        objects: str | os.PathLike | None = None,
        **options: Any,
    ) -> Job:
        """What ``tileseg segment`` does, on the server: submit, wait, and write the mask to ``output`` (and
        the polygons to ``vectors``, the per-class probabilities to ``probabilities``; with a model that makes
        objects, their label GeoTIFF to ``instances`` and their table (CSV) to ``objects``: either asks the job
        for ``instances=true``). Interrupted (KeyboardInterrupt) while the job runs, it cancels the job on the
        server and re-raises.

        Returns:
            The succeeded job (its ``result`` says what the run did; ``result["objects"]`` counts the objects
            per class).

        Raises:
            ClientError: a subclass of it, as :meth:`submit`, :meth:`wait` and :meth:`download` raise them.
        """
        if vectors is not None:
            vector_format(Path(vectors))  # before any upload
        asked = {"vectors": vectors is not None or None, "probabilities": probabilities is not None or None}
        if instances is not None or objects is not None:
            asked["instances"] = True
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
        for what, path in (("instances", instances), ("objects", objects)):
            if path is not None:
                self.download(done, what, path)
        return done


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


def _job_path(job: JobRef) -> str:
    return f"jobs/{job['id'] if isinstance(job, Mapping) else job}"


def _batch_path(batch: JobRef) -> str:
    return f"batches/{batch['id'] if isinstance(batch, Mapping) else batch}"


def _json_value(value: Any) -> Any:
    """An option as JSON: enums by value, tuples as lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def _form_value(value: Any) -> str:
    """An option as a form field: booleans as the form reads them, enums by value, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


__all__ = ["Client", "Job", "JobRef", "Progress", "vector_format"]
