"""The viewer's routes: the web page, a job's live progress as server-sent events, and web tiles of its
input and mask.

``GET /`` is the page, ``GET /viewer/config`` its settings (the base map) and ``/ui/`` its assets (plain
HTML, a little JavaScript, and the vendored Leaflet and OpenSeadragon, committed by ``make vendor``): public,
the page asks for a key when the API wants one.
``GET /jobs/{id}/events`` streams the job (the same JSON as ``GET /jobs/{id}``) each time its status or
progress changes, read from the job table every :data:`POLL_SECONDS`, and ends once the job is final.
``GET /jobs/{id}/tiles`` describes the two tile pyramids; ``GET /jobs/{id}/tiles/{layer}/{z}/{x}/{y}.png``
renders one tile (:mod:`tileseg.engine.views.render`). Keys and ownership as on every job route.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from tileseg.api.deps import JobsDep, OwnerDep, SettingsDep
from tileseg.api.errors import ERROR_RESPONSES
from tileseg.api.schemas import JobOut
from tileseg.engine.views.render import pyramid, render_tile
from tileseg.jobs.errors import JobNotFoundError, ResultNotFoundError
from tileseg.jobs.service import JobService
from tileseg.jobs.store import Job

router = APIRouter(tags=["viewer"])

POLL_SECONDS = 0.25  # how often a stream reads its job: a row read by key, cheap
STREAM_SECONDS = 60.0  # a stream ends after this (the browser reconnects), so no stream holds up a shutdown
KEEPALIVE_SECONDS = 15.0
TILE_CACHE = "private, max-age=3600"  # a published result never changes; it may expire, and then it is a 410
RENDERS = threading.BoundedSemaphore(4)  # tiles rendered at once: bounds the CPU a zooming browser takes
UI_DIR = Path(__file__).parent / "ui"


class Layer(str, enum.Enum):
    input = "input"
    mask = "mask"


def _errors(*statuses: int) -> dict:
    return {s: ERROR_RESPONSES[s] for s in statuses}


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    summary="A job's progress, live (server-sent events)",
    responses={
        200: {"description": "`event: job` with the job's JSON at each change; `event: end` once it is final."},
        **_errors(400, 401, 404),
    },
)
async def job_events(request: Request, job_id: uuid.UUID, jobs: JobsDep, owner: OwnerDep) -> StreamingResponse:
    """The job as ``GET /jobs/{id}`` gives it, sent again at each change of status or progress; the stream
    ends after the job is final (or after a minute: ``EventSource`` reconnects and gets the job again)."""
    job = await run_in_threadpool(jobs.get, str(job_id), owner)  # a 404 before the stream starts
    base = request.scope.get("root_path", "")
    return StreamingResponse(
        _stream(request, jobs, job, owner, base),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(request: Request, jobs: JobService, job: Job, owner: Any, base: str) -> AsyncIterator[str]:
    yield "retry: 1000\n\n"
    start = last_sent = time.monotonic()
    seen = None
    while True:
        state = (job.status, job.tiles_done, job.tiles_total, job.attempts, job.error_code)
        if state != seen:
            seen, last_sent = state, time.monotonic()
            yield f"event: job\ndata: {JobOut.of(job, base).model_dump_json(by_alias=True)}\n\n"
        elif time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
        if job.status.finished:
            yield f"event: end\ndata: {job.status.value}\n\n"
            return
        if time.monotonic() - start > STREAM_SECONDS or await request.is_disconnected():
            return
        await asyncio.sleep(POLL_SECONDS)
        try:
            job = await run_in_threadpool(jobs.get, job.id, owner)
        except JobNotFoundError:  # deleted meanwhile
            yield "event: end\ndata: gone\n\n"
            return


@router.get("/jobs/{job_id}/tiles", summary="The viewer's tile pyramids", responses=_errors(400, 401, 404, 409, 410))
def describe_tiles(request: Request, job_id: uuid.UUID, jobs: JobsDep, owner: OwnerDep) -> dict[str, Any]:
    """How to show the job's results: the mask's pyramid (``xyz`` web-mercator tiles for georeferenced
    inputs, ``deepzoom`` for pixel-space images), its classes, and the tile URL of each layer (``input`` is
    null when the job has no view copy of its input)."""
    job, mask = jobs.layer(str(job_id), "mask", owner)
    try:
        jobs.layer(job.id, "input", owner)
        has_input = True
    except ResultNotFoundError:
        has_input = False
    url = f"{request.scope.get('root_path', '')}/jobs/{job.id}/tiles"
    return {
        **pyramid(mask).to_dict(),
        "classes": jobs.models.describe(job.model).get("classes", []) if job.model in jobs.models.names else [],
        "urls": {
            "mask": f"{url}/mask/{{z}}/{{x}}/{{y}}.png",
            "input": f"{url}/input/{{z}}/{{x}}/{{y}}.png" if has_input else None,
        },
    }


@router.get(
    "/jobs/{job_id}/tiles/{layer}/{z}/{x}/{y}.png",
    response_class=Response,
    summary="One tile of the input or the mask",
    responses={
        200: {"description": "An RGBA PNG, 256 px (Deep Zoom edge tiles smaller).", "content": {"image/png": {}}},
        304: {"description": "Not modified (If-None-Match)."},
        **_errors(400, 401, 404, 409, 410, 422),
    },
)
def get_tile(
    job_id: uuid.UUID,
    layer: Layer,
    z: int,
    x: int,
    y: int,
    jobs: JobsDep,
    owner: OwnerDep,
    hide: Annotated[
        str | None, Query(pattern=r"^\d{1,5}(,\d{1,5}){0,255}$", description="Classes to leave out.")
    ] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """A tile of the ``input`` (its view copy) or the ``mask`` (class colours, nodata and the ``hide``
    classes transparent). 404 for a tile that does not touch the image, 422 for an address outside the
    scheme (a negative index, a level too deep)."""
    job, path = jobs.layer(str(job_id), layer.value, owner)
    hidden = tuple(sorted({int(c) for c in hide.split(",")})) if hide and layer is Layer.mask else ()
    tag = hashlib.sha256(f"{job.id}:{job.published}:{layer.value}:{z}/{x}/{y}:{hidden}".encode()).hexdigest()[:32]
    headers = {"ETag": f'"{tag}"', "Cache-Control": TILE_CACHE}
    if if_none_match and f'"{tag}"' in if_none_match:
        return Response(status_code=304, headers=headers)
    with RENDERS:
        png = render_tile(path, layer.value, z, x, y, hidden)
    return Response(png, media_type="image/png", headers=headers)


@router.get("/viewer/config", summary="The page's settings")
def page_config(settings: SettingsDep) -> dict[str, Any]:
    """What the page needs from the server's settings: ``basemap``, an XYZ tile template drawn under
    georeferenced masks, or null. Public, like the page."""
    return {"basemap": settings.basemap_url}


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    """The page."""
    return FileResponse(UI_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """Serve the viewer's routes, the page at ``/`` and its assets at ``/ui/``."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")


__all__ = ["install", "router"]
