"""OGC API – Processes, Part 1: Core, at ``/ogc/``: the same segmentation as ``POST /segment``, for the
geoprocessing clients that speak the standard (OWSLib, QGIS' and ArcGIS' OGC processing tools, pygeoapi's
chains).

One process, ``segment``. Its inputs are ``image`` (an ``href`` that the server's ``source`` rules allow, or an
inline base64 ``value`` for small images), ``model`` and the options of ``POST /segment``'s form, described by
the same schemas (:func:`tileseg.api.schemas.form_properties`). Executing it submits a job through the job
service, exactly as ``POST /segment`` does: the same checks, keys, limits and workers; an OGC job *is* a
tileseg job, and ``/ogc/jobs/{id}`` is ``/jobs/{id}`` in the standard's shape. Its results are links to the
job's own result routes. Errors here are the standard's exception JSON (``type``, ``title``, ``status``,
``detail``), not the rest of the API's ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tileseg import __version__
from tileseg.api.deps import JobsDep, OwnerDep, SettingsDep
from tileseg.api.downloads import send
from tileseg.api.errors import STATUS_BY_CODE, RequestError, UploadTooLargeError, describe_validation, status_for
from tileseg.api.schemas import form_properties
from tileseg.errors import TilesegError
from tileseg.jobs.errors import JobFailedError, ResultNotReadyError
from tileseg.jobs.intake import JobOptions, form_fields
from tileseg.jobs.service import JobService, Upload
from tileseg.jobs.store import Job, JobStatus

PROCESS_ID = "segment"
MAX_INLINE_BYTES = 16 << 20  # a decoded inline image; larger ones go by href, or by POST /segment's upload
SYNC_WAIT_SECONDS = 60.0  # a synchronous execution waits this long, then answers as an asynchronous one
POLL_SECONDS = 0.25

SPEC = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf"
CONFORMANCE = [f"{SPEC}/{name}" for name in ("core", "ogc-process-description", "json", "job-list", "dismiss")]
REL = "http://www.opengis.net/def/rel/ogc/1.0"
EXCEPTIONS = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0"
MASK_TYPE = "image/tiff; application=geotiff"
VECTORS_TYPE = "application/geopackage+sqlite3"

# The standard's job states, from the job table's: a canceled job is dismissed; so is an expired one, whose
# results the server has removed.
OGC_STATUS = {
    JobStatus.QUEUED: "accepted",
    JobStatus.RUNNING: "running",
    JobStatus.SUCCEEDED: "successful",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "dismissed",
    JobStatus.EXPIRED: "dismissed",
}
# The standard's own exception types, for the product's errors that have one.
EXCEPTION_TYPES = {
    "job_not_found": "no-such-job",
    "not_ready": "result-not-ready",
    "canceled": "no-such-job",
    "expired": "no-such-job",
    "no_such_process": "no-such-process",
}


# ---- errors in the standard's shape --------------------------------------------------------------------------


def exception_response(status: int, code: str, title: str, detail: str) -> JSONResponse:
    """An OGC exception (RFC 7807 problem details): ``type`` a URI, the standard's where it names one."""
    kind = EXCEPTION_TYPES.get(code)
    body = {
        "type": f"{EXCEPTIONS}/{kind}" if kind else f"urn:tileseg:error:{code}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


class OgcRoute(APIRoute):
    """A route whose errors (its dependencies' too: a missing key) are answered as OGC exceptions; the app's
    own handlers answer in the rest of the API's shape, which OGC clients do not read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except TilesegError as err:
                status = status_for(err)
                if isinstance(err, ResultNotReadyError) and not isinstance(err, JobFailedError):
                    status = 404  # the standard's status for results asked for too early
                return exception_response(status, err.code, _title(err.code), str(err))
            except RequestValidationError as err:
                return exception_response(400, "bad_request", "Bad request", describe_validation(list(err.errors())))
            except StarletteHTTPException as err:
                return exception_response(err.status_code, "http_error", "HTTP error", str(err.detail))

        return handle


def _title(code: str) -> str:
    return code.replace("_", " ").capitalize()


# Out of /openapi.json: the routes describe themselves the standard's way (/ogc/processes/segment), and their
# errors have the standard's shape, not the one shape that schema declares for every route of the API.
router = APIRouter(prefix="/ogc", tags=["OGC API – Processes"], route_class=OgcRoute, include_in_schema=False)


# ---- discovery ------------------------------------------------------------------------------------------------


def _link(href: str, rel: str, title: str, type_: str = "application/json") -> dict[str, str]:
    return {"href": href, "rel": rel, "type": type_, "title": title}


def _base(request: Request) -> str:
    """The server's absolute URL (behind a proxy: with its root path): OGC clients follow links as given."""
    return str(request.base_url).rstrip("/")


@router.get("/", summary="Landing page")
def landing(request: Request, owner: OwnerDep) -> dict[str, Any]:
    """The API's entry: links to its description, conformance, processes and jobs."""
    base = _base(request)
    return {
        "title": "tileseg",
        "description": "Segment large rasters tile by tile with trained networks, into a mask GeoTIFF.",
        "links": [
            _link(f"{base}/ogc/", "self", "This document"),
            _link(
                f"{base}/openapi.json",
                "service-desc",
                "The API definition",
                "application/vnd.oai.openapi+json;version=3.0",
            ),
            _link(f"{base}/docs", "service-doc", "The API documentation", "text/html"),
            _link(f"{base}/ogc/conformance", f"{REL}/conformance", "Conformance classes"),
            _link(f"{base}/ogc/processes", f"{REL}/processes", "Processes"),
            _link(f"{base}/ogc/jobs", f"{REL}/job-list", "Jobs"),
        ],
    }


@router.get("/conformance", summary="Conformance classes")
def conformance(owner: OwnerDep) -> dict[str, list[str]]:
    """The conformance classes implemented: Core, OGC process description, JSON, job list, dismiss."""
    return {"conformsTo": CONFORMANCE}


def _summary(base: str) -> dict[str, Any]:
    return {
        "id": PROCESS_ID,
        "title": "Segment an image",
        "description": "Segment a raster tile by tile with a served model, into a class-index mask GeoTIFF "
        "(and, if asked, its regions as polygons).",
        "version": __version__,
        "jobControlOptions": ["sync-execute", "async-execute", "dismiss"],
        "outputTransmission": ["reference", "value"],
        "links": [_link(f"{base}/ogc/processes/{PROCESS_ID}", "self", "The process description")],
    }


@router.get("/processes", summary="The processes")
def processes(request: Request, owner: OwnerDep) -> dict[str, Any]:
    """One process: ``segment``."""
    base = _base(request)
    return {"processes": [_summary(base)], "links": [_link(f"{base}/ogc/processes", "self", "This document")]}


@router.get("/processes/{process_id}", summary="A process's description")
def describe(request: Request, process_id: str, jobs: JobsDep, owner: OwnerDep) -> dict[str, Any]:
    """The process, its inputs (``image``, ``model`` and the options) and outputs (``mask``, ``vectors``)."""
    _check_process(process_id)
    options = {}
    for name, prop in form_properties().items():
        schema = {k: v for k, v in prop.items() if k != "description"}
        options[name] = {"title": name, "description": prop["description"], "schema": schema, "minOccurs": 0}
    image_schema = {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/tiff"}
    return {
        **_summary(_base(request)),
        "inputs": {
            "image": {
                "title": "The image",
                "description": "An href to a raster the server may read (a path under its input folders, as "
                f"POST /segment's `source`), or an inline base64 `value` of at most {MAX_INLINE_BYTES} bytes.",
                "schema": image_schema,
                "minOccurs": 1,
                "maxOccurs": 1,
            },
            "model": {
                "title": "The model",
                "description": "A served model (GET /models).",
                "schema": {"type": "string", "enum": list(jobs.models.names)},
                "minOccurs": 1,
                "maxOccurs": 1,
            },
            **options,
        },
        "outputs": {
            "mask": {
                "title": "The mask",
                "description": "A class-index GeoTIFF on the input's grid.",
                "schema": {"type": "string", "contentEncoding": "binary", "contentMediaType": MASK_TYPE},
            },
            "vectors": {
                "title": "The polygons",
                "description": "Each region of each object class as a polygon (asked for by listing this output, "
                "or with the `vectors` input).",
                "schema": {"type": "string", "contentEncoding": "binary", "contentMediaType": VECTORS_TYPE},
            },
        },
    }


def _check_process(process_id: str) -> None:
    if process_id != PROCESS_ID:
        raise _NoSuchProcess(f"no process {process_id!r}: this server has one, {PROCESS_ID!r}")


class _NoSuchProcess(TilesegError, LookupError):
    code = "no_such_process"


# ---- execution ------------------------------------------------------------------------------------------------


@router.post(
    "/processes/{process_id}/execution",
    summary="Execute a process",
    responses={201: {"description": "Asynchronous: the job's status, its URL in Location."}},
)
async def execute(
    request: Request,
    process_id: str,
    jobs: JobsDep,
    owner: OwnerDep,
    settings: SettingsDep,
    prefer: Annotated[str | None, Header()] = None,
) -> Response:
    """Submit a job. With ``Prefer: respond-async``: 201, ``Location`` the job's status. Otherwise the job is
    waited for (up to a minute, then answered as if asynchronous) and its results returned: the results
    document, or the mask itself with ``"response": "raw"``."""
    _check_process(process_id)
    body = await _read_json(request, min(settings.max_upload_bytes, 2 * MAX_INLINE_BYTES))
    inputs, want_vectors, raw = _parse_execute(body)
    job = await _submit(jobs, owner, inputs, want_vectors)
    base = _base(request)
    asynchronous = "respond-async" in (prefer or "").lower()
    if not asynchronous:
        job = await _wait(jobs, job, owner)
    if asynchronous or not job.status.finished:
        headers = {"Location": f"{base}/ogc/jobs/{job.id}"}
        if asynchronous:
            headers["Preference-Applied"] = "respond-async"
        return JSONResponse(status_info(job, base), status_code=201, headers=headers)
    if job.status is JobStatus.FAILED:
        return _failed(job)
    if raw:
        _, path = await run_in_threadpool(jobs.result, job.id, "mask", owner)
        return send(path, MASK_TYPE, f"{job.id}.mask.tif", redirect=jobs.settings.results_redirect)
    return JSONResponse(await run_in_threadpool(_results, jobs, job.id, owner, base))


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, refused past ``limit`` bytes while it is still arriving."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(f"the request has {declared} bytes; the limit is {limit}: send larger images by href")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise UploadTooLargeError(f"the request has more than {limit} bytes: send larger images by href")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the execute request is not JSON") from None
    if not isinstance(data, dict):
        raise RequestError('the execute request is a JSON object: {"inputs": {...}, "outputs": {...}}')
    return data


def _parse_execute(body: dict[str, Any]) -> tuple[dict[str, Any], bool, bool]:
    """The inputs, whether vectors were asked for as an output, and whether the raw mask is wanted."""
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        raise RequestError('the execute request needs "inputs": {"image": {"href": ...}, "model": ...}')
    outputs = body.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise RequestError('"outputs" is an object: {"mask": {}, "vectors": {}}')
    unknown = sorted(set(outputs) - {"mask", "vectors"})
    if unknown:
        raise RequestError(f"no output {unknown[0]!r}: the outputs are mask and vectors")
    return inputs, "vectors" in outputs, body.get("response") == "raw"


async def _submit(jobs: JobService, owner: str | None, inputs: dict[str, Any], want_vectors: bool) -> Job:
    """Submit the job through the job service, as ``POST /segment`` does (the same checks, the same job)."""
    values = {name: _plain(name, value) for name, value in inputs.items() if name != "image"}
    model = values.pop("model", None)
    if not isinstance(model, str) or not model:
        raise RequestError("the input `model` is required: a served model's name (GET /models)")
    unknown = sorted(set(values) - set(form_fields()))
    if unknown:
        raise RequestError(f"no input {unknown[0]!r}: the inputs are image, model, {', '.join(form_fields())}")
    if want_vectors:
        values["vectors"] = True
    try:
        options = JobOptions(**values)
    except ValidationError as err:
        raise RequestError(describe_validation(err.errors())) from None
    image = inputs.get("image")
    job_id, files = jobs.new_job_files()
    try:
        source, size = _image(image, files.upload)
    except BaseException:
        files.remove()
        raise
    upload = Upload(files.upload, f"inline-{job_id[:8]}.tif", size) if source is None else None
    return await run_in_threadpool(jobs.submit, job_id, model, options, owner, upload, source)


def _plain(name: str, value: Any) -> Any:
    """An input's value: given plainly, or as a qualified value ``{"value": ...}``."""
    if isinstance(value, dict) and "value" in value:
        return value["value"]
    if isinstance(value, (dict, list)):
        raise RequestError(f"the input {name!r} takes one plain value")
    return value


def _image(image: Any, destination: Any) -> tuple[str | None, int]:
    """The ``image`` input: ``(source, 0)`` for an href (checked later by the same rules as ``source``), or
    ``(None, size)`` once an inline value is decoded and written to ``destination``."""
    if isinstance(image, dict) and "href" in image:
        href = str(image["href"])
        # a file: URI names a path on the server: the path is what the source rules judge; anything else
        # goes to them as it came (they refuse what they do not take)
        parts = urlsplit(href)
        return (unquote(parts.path) if parts.scheme == "file" and parts.netloc in ("", "localhost") else href), 0
    text = image.get("value") if isinstance(image, dict) else image
    if not isinstance(text, str) or not text:
        raise RequestError('the input `image` is required: {"href": "<path or URL>"} or {"value": "<base64>"}')
    if len(text) > (MAX_INLINE_BYTES * 4) // 3 + 4:
        raise UploadTooLargeError(f"an inline image has at most {MAX_INLINE_BYTES} bytes: send larger ones by href")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("the input `image` value is not base64") from None
    destination.write_bytes(data)
    return None, len(data)


async def _wait(jobs: JobService, job: Job, owner: str | None) -> Job:
    deadline = time.monotonic() + SYNC_WAIT_SECONDS
    while not job.status.finished and time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        job = await run_in_threadpool(jobs.get, job.id, owner)
    return job


# ---- jobs -----------------------------------------------------------------------------------------------------


def status_info(job: Job, base: str) -> dict[str, Any]:
    """A job in the standard's ``statusInfo`` shape."""
    status = OGC_STATUS[job.status]
    total = job.tiles_total
    progress = 100 if status == "successful" else (int(100 * job.tiles_done / total) if total else 0)
    url = f"{base}/ogc/jobs/{job.id}"
    links = [
        _link(url, "self", "The job's status"),
        _link(f"{base}/jobs/{job.id}", "alternate", "The job in tileseg's API"),
    ]
    if status == "successful":
        links.append(_link(f"{url}/results", f"{REL}/results", "The results"))
    message = f"{job.error_code}: {job.error_message}" if job.error_code else f"{job.tiles_done}/{total} tiles"
    info = {
        "jobID": job.id,
        "processID": PROCESS_ID,
        "type": "process",
        "status": status,
        "message": message,
        "created": _time(job.created),
        "started": _time(job.started),
        "finished": _time(job.finished),
        "updated": _time(job.finished or job.read_at or job.started or job.created),
        "progress": progress,
        "links": links,
    }
    return {k: v for k, v in info.items() if v is not None}


@router.get("/jobs", summary="The jobs")
def list_jobs(request: Request, jobs: JobsDep, owner: OwnerDep) -> dict[str, Any]:
    """The caller's jobs, newest first (the latest 500), as status infos."""
    base = _base(request)
    return {
        "jobs": [status_info(job, base) for job in jobs.list(owner, 500, 0)],
        "links": [_link(f"{base}/ogc/jobs", "self", "This document")],
    }


@router.get("/jobs/{job_id}", summary="A job's status")
def get_job(request: Request, job_id: uuid.UUID, jobs: JobsDep, owner: OwnerDep) -> dict[str, Any]:
    """The job's status info."""
    return status_info(jobs.get(str(job_id), owner), _base(request))


@router.get("/jobs/{job_id}/results", summary="A job's results")
def get_results(request: Request, job_id: uuid.UUID, jobs: JobsDep, owner: OwnerDep) -> Response:
    """Links to the job's results: ``mask`` and, when asked for, ``vectors``. A job not finished is a 404
    (result-not-ready); a failed job answers with its own error."""
    job = jobs.get(str(job_id), owner)
    if job.status is JobStatus.FAILED:
        return _failed(job)
    return JSONResponse(_results(jobs, job.id, owner, _base(request)))


def _failed(job: Job) -> JSONResponse:
    """A failed job's results: the exception that failed it, with the status the same error has at submission."""
    code = job.error_code or "job_failed"
    return exception_response(STATUS_BY_CODE.get(code, 500), code, _title(code), job.error_message or "the job failed")


def _results(jobs: JobService, job_id: str, owner: str | None, base: str) -> dict[str, Any]:
    job, _ = jobs.result(job_id, "mask", owner)
    results = {"mask": {"href": f"{base}/jobs/{job.id}/mask", "type": MASK_TYPE}}
    if job.options.get("vectors"):
        results["vectors"] = {"href": f"{base}/jobs/{job.id}/vectors", "type": VECTORS_TYPE}
    return results


@router.delete("/jobs/{job_id}", summary="Dismiss a job")
def dismiss(request: Request, job_id: uuid.UUID, jobs: JobsDep, owner: OwnerDep) -> dict[str, Any]:
    """Cancel a queued or running job (it stops at its next batch), or give up a finished job's results."""
    jobs.cancel(str(job_id), owner)
    return status_info(jobs.get(str(job_id), owner), _base(request))


def _time(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc).isoformat()


__all__ = ["CONFORMANCE", "OgcRoute", "exception_response", "router", "status_info"]
