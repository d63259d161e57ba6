"""Jobs: submit an image (``POST /segment``), follow it, fetch its results, cancel it."""

from __future__ import annotations

import enum
import re
import uuid
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from tileseg.api.deps import JobsDep, OwnerDep, SettingsDep
from tileseg.api.downloads import send
from tileseg.api.errors import ERROR_RESPONSES
from tileseg.api.schemas import FORM_FIELDS, SEGMENT_FORM_SCHEMA, JobList, JobOut, SegmentForm
from tileseg.api.uploads import receive_form
from tileseg.jobs.callbacks import job_callbacks
from tileseg.jobs.service import JobService, ResultRef, Upload
from tileseg.jobs.store import Job

router = APIRouter(tags=["jobs"])

JobId = uuid.UUID  # a malformed id is a 400 before any lookup


def _errors(*statuses: int) -> dict:
    return {s: ERROR_RESPONSES[s] for s in statuses}


def _file(content_type: str, description: str) -> dict:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        200: {"description": description, "content": {content_type: binary}},
        206: {"description": "The byte range asked for (Range header).", "content": {content_type: binary}},
        307: {"description": "Results in S3 with TILESEG_RESULTS_REDIRECT: a presigned URL of the object."},
    }


@router.post(
    "/segment",
    status_code=202,
    response_model=JobOut,
    summary="Segment an image (a job)",
    responses={
        202: {"headers": {"Location": {"description": "The job's URL.", "schema": {"type": "string"}}}},
        **_errors(400, 401, 404, 413, 415, 422, 503),
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": SEGMENT_FORM_SCHEMA}}}
    },
)
async def submit(request: Request, response: Response, jobs: JobsDep, owner: OwnerDep, settings: SettingsDep) -> JobOut:
    """Queue a segmentation of an uploaded `file`, or of a `source` path on the server, with a `model` and
    the command line's options. Everything that can be checked from the image's header is checked now; a
    `callback` URL is posted the job's status when it ends."""
    job_id, files = jobs.new_job_files()
    try:
        form = await receive_form(request, files.upload, settings.max_upload_bytes, FORM_FIELDS)
        fields, options = SegmentForm.parse(form.fields, form.has_file)
        callback = await run_in_threadpool(job_callbacks, list(settings.callback_allow), fields.callback)
    except BaseException:
        files.remove()
        raise
    upload = Upload(files.upload, _display_name(form.filename, job_id), form.file_size) if form.has_file else None
    job = await run_in_threadpool(jobs.submit, job_id, fields.model, options, owner, upload, fields.source, callback)
    out = JobOut.of(job, request.scope.get("root_path", ""))
    response.headers["Location"] = out.links.self_
    return out


@router.get("/jobs", response_model=JobList, summary="List jobs, newest first", responses=_errors(400, 401))
def list_jobs(
    request: Request,
    jobs: JobsDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> JobList:
    """The caller's jobs, newest first."""
    base = request.scope.get("root_path", "")
    return JobList(jobs=[JobOut.of(j, base) for j in jobs.list(owner, limit, offset)], limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobOut, summary="A job", responses=_errors(400, 401, 404))
def get_job(request: Request, job_id: JobId, jobs: JobsDep, owner: OwnerDep) -> JobOut:
    """The job: status, progress, timings, error, links."""
    return JobOut.of(jobs.get(str(job_id), owner), request.scope.get("root_path", ""))


@router.delete(
    "/jobs/{job_id}", status_code=204, response_class=Response, summary="Cancel a job", responses=_errors(400, 401, 404)
)
def cancel_job(job_id: JobId, jobs: JobsDep, owner: OwnerDep) -> Response:
    """Cancel a queued or running job (it stops at its next batch) and remove its files; on a finished
    job, remove its results."""
    jobs.cancel(str(job_id), owner)
    return Response(status_code=204)


@router.get(
    "/jobs/{job_id}/mask",
    response_class=FileResponse,
    summary="The mask GeoTIFF",
    responses={**_file("image/tiff", "The class-index GeoTIFF."), **_errors(400, 401, 404, 409, 410, 503)},
)
def get_mask(job_id: JobId, request: Request, jobs: JobsDep, owner: OwnerDep) -> Response:
    """The mask: a class-index GeoTIFF on the input's grid. Range requests are served. With results in S3
    and TILESEG_RESULTS_REDIRECT, a 307 to a presigned URL of the object."""
    job, path = jobs.result(str(job_id), "mask", owner)
    return _send(request, jobs, path, "image/tiff", f"{_stem(job)}.mask.tif")


@router.get(
    "/jobs/{job_id}/probabilities",
    response_class=FileResponse,
    summary="The probabilities GeoTIFF",
    responses={
        **_file("image/tiff", "Per-class probabilities, uint8 0..255, one band per class."),
        **_errors(400, 401, 404, 409, 410, 503),
    },
)
def get_probabilities(job_id: JobId, request: Request, jobs: JobsDep, owner: OwnerDep) -> Response:
    """Per-class probabilities, when the job asked for them."""
    job, path = jobs.result(str(job_id), "probabilities", owner)
    return _send(request, jobs, path, "image/tiff", f"{_stem(job)}.probabilities.tif")


class VectorFormat(str, enum.Enum):
    """The formats ``GET /jobs/{id}/vectors`` serves: the stored GeoPackage, or GeoJSON made from it."""

    GPKG = "gpkg"
    GEOJSON = "geojson"


VECTOR_MEDIA = {VectorFormat.GPKG: "application/geopackage+sqlite3", VectorFormat.GEOJSON: "application/geo+json"}


@router.get(
    "/jobs/{job_id}/vectors",
    response_class=FileResponse,
    summary="The polygons of the mask's regions",
    responses={
        **_file("application/geopackage+sqlite3", "A GeoPackage, or GeoJSON with ?format=geojson."),
        **_errors(400, 401, 404, 409, 410, 503),
    },
)
async def get_vectors(
    job_id: JobId,
    request: Request,
    jobs: JobsDep,
    owner: OwnerDep,
    format: Annotated[VectorFormat, Query()] = VectorFormat.GPKG,
) -> Response:
    """One polygon per connected region of each object class: in the input's CRS for georeferenced inputs,
    in pixel coordinates (QuPath's GeoJSON) otherwise. Only when the job asked for vectors."""
    job, path = await run_in_threadpool(jobs.vector_result, str(job_id), format.value, owner)
    return _send(request, jobs, path, VECTOR_MEDIA[format], f"{_stem(job)}.vectors.{format.value}")


@router.get(
    "/jobs/{job_id}/instances",
    response_class=FileResponse,
    summary="The objects' label GeoTIFF",
    responses={
        **_file("image/tiff", "A uint32 GeoTIFF on the mask's grid: 0 no object, 1..N one object each."),
        **_errors(400, 401, 404, 409, 410, 503),
    },
)
def get_instances(job_id: JobId, request: Request, jobs: JobsDep, owner: OwnerDep) -> Response:
    """The objects' labels, when the job asked for them (``instances=true``): each object's id in its pixels,
    on the mask's grid, CRS and transform. Range requests are served; with results in S3 and
    TILESEG_RESULTS_REDIRECT, a 307 to a presigned URL of the object."""
    job, path = jobs.result(str(job_id), "instances", owner)
    return _send(request, jobs, path, "image/tiff", f"{_stem(job)}.instances.tif")


@router.get(
    "/jobs/{job_id}/objects",
    response_class=FileResponse,
    summary="The objects' table",
    responses={
        **_file("text/csv", "One row per object: id, class, area, perimeter, centroid, probability, band means."),
        **_errors(400, 401, 404, 409, 410, 503),
    },
)
def get_objects(job_id: JobId, request: Request, jobs: JobsDep, owner: OwnerDep) -> Response:
    """The objects' table (CSV), one row per object of the label GeoTIFF, when the job asked for objects."""
    job, path = jobs.result(str(job_id), "objects", owner)
    return _send(request, jobs, path, "text/csv", f"{_stem(job)}.objects.csv")


@router.get(
    "/jobs/{job_id}/preview.png",
    response_class=FileResponse,
    summary="A small colour preview",
    responses={
        **_file("image/png", "The mask in its classes' colours, at most 512 px a side."),
        **_errors(400, 401, 404, 409, 410, 503),
    },
)
def get_preview(job_id: JobId, request: Request, jobs: JobsDep, owner: OwnerDep) -> Response:
    """The mask in its classes' colours, nodata transparent, at most 512 pixels a side."""
    job, path = jobs.result(str(job_id), "preview", owner)
    return _send(request, jobs, path, "image/png", f"{_stem(job)}.preview.png", disposition="inline")


def _send(
    request: Request, jobs: JobService, ref: ResultRef, media_type: str, filename: str, disposition: str = "attachment"
) -> Response:
    """A result's answer: the file (with range requests), or the object in S3 streamed or redirected to."""
    redirect = jobs.settings.results_redirect
    return send(ref, media_type, filename, disposition, request.headers.get("range"), redirect)


def _display_name(filename: str | None, job_id: str) -> str:
    """The client's file name as shown in the job (its last component only); never used as a path."""
    name = PurePath((filename or "").replace("\\", "/")).name.strip()
    return name or f"upload-{job_id[:8]}"


def _stem(job: Job) -> str:
    """A download name from the input's name: letters, digits, ``._-`` only."""
    stem = PurePath(job.input.get("name") or "").stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:100] or job.id


__all__ = ["router"]
