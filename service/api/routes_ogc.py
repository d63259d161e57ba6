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

The process's documents are :mod:`tileseg.api.ogc_process`'s, the translation of an execute request into a job
:mod:`tileseg.api.ogc_execute`'s; the routes here answer with them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tileseg.api.deps import JobsDep, OwnerDep, SettingsDep
from tileseg.api.downloads import send
from tileseg.api.errors import STATUS_BY_CODE, describe_validation, status_for
from tileseg.api.ogc_execute import parse_execute, read_json, submit, wait
from tileseg.api.ogc_process import (
    CONFORMANCE,
    MASK_TYPE,
    MAX_INLINE_BYTES,
    PROCESS_ID,
    REL,
    description,
    job_results,
    link,
    status_info,
    summary,
)
from tileseg.errors import TilesegError
from tileseg.jobs.errors import JobFailedError, ResultNotReadyError
from tileseg.jobs.store import Job, JobStatus

EXCEPTIONS = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0"
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
            link(f"{base}/ogc/", "self", "This document"),
            link(
                f"{base}/openapi.json",
                "service-desc",
                "The API definition",
                "application/vnd.oai.openapi+json;version=3.0",
            ),
            link(f"{base}/docs", "service-doc", "The API documentation", "text/html"),
            link(f"{base}/ogc/conformance", f"{REL}/conformance", "Conformance classes"),
            link(f"{base}/ogc/processes", f"{REL}/processes", "Processes"),
            link(f"{base}/ogc/jobs", f"{REL}/job-list", "Jobs"),
        ],
    }


@router.get("/conformance", summary="Conformance classes")
def conformance(owner: OwnerDep) -> dict[str, list[str]]:
    """The conformance classes implemented: Core, OGC process description, JSON, job list, callback, dismiss."""
    return {"conformsTo": CONFORMANCE}


@router.get("/processes", summary="The processes")
def processes(request: Request, owner: OwnerDep) -> dict[str, Any]:
    """One process: ``segment``."""
    base = _base(request)
    return {"processes": [summary(base)], "links": [link(f"{base}/ogc/processes", "self", "This document")]}


@router.get("/processes/{process_id}", summary="A process's description")
def describe(request: Request, process_id: str, jobs: JobsDep, owner: OwnerDep) -> dict[str, Any]:
    """The process, its inputs (``image``, ``model`` and the options) and outputs (``mask``, ``vectors``)."""
    _check_process(process_id)
    return description(_base(request), jobs.models.names)


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
    document, or the mask itself with ``"response": "raw"``. A ``subscriber`` (``successUri``, ``failedUri``,
    ``inProgressUri``) is posted the job's status as ``POST /segment``'s ``callback`` is."""
    _check_process(process_id)
    body = await read_json(request, min(settings.max_upload_bytes, 2 * MAX_INLINE_BYTES))
    inputs, want_vectors, raw = parse_execute(body)
    job = await submit(jobs, owner, inputs, want_vectors, body.get("subscriber"))
    base = _base(request)
    asynchronous = "respond-async" in (prefer or "").lower()
    if not asynchronous:
        job = await wait(jobs, job, owner)
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
    return JSONResponse(await run_in_threadpool(job_results, jobs, job.id, owner, base))


# ---- jobs -----------------------------------------------------------------------------------------------------


@router.get("/jobs", summary="The jobs")
def list_jobs(request: Request, jobs: JobsDep, owner: OwnerDep) -> dict[str, Any]:
    """The caller's jobs, newest first (the latest 500), as status infos."""
    base = _base(request)
    return {
        "jobs": [status_info(job, base) for job in jobs.list(owner, 500, 0)],
        "links": [link(f"{base}/ogc/jobs", "self", "This document")],
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
    return JSONResponse(job_results(jobs, job.id, owner, _base(request)))


def _failed(job: Job) -> JSONResponse:
    """A failed job's results: the exception that failed it, with the status the same error has at submission."""
    code = job.error_code or "job_failed"
    return exception_response(STATUS_BY_CODE.get(code, 500), code, _title(code), job.error_message or "the job failed")


@router.delete("/jobs/{job_id}", summary="Dismiss a job")
def dismiss(request: Request, job_id: uuid.UUID, jobs: JobsDep, owner: OwnerDep) -> dict[str, Any]:
    """Cancel a queued or running job (it stops at its next batch), or give up a finished job's results."""
    jobs.cancel(str(job_id), owner)
    return status_info(jobs.get(str(job_id), owner), _base(request))


__all__ = ["CONFORMANCE", "OgcRoute", "exception_response", "router", "status_info"]
