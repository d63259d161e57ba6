"""The FastAPI app: assembled here, and nothing else. ``tileseg serve`` runs it with uvicorn.

The lifespan makes the metrics and the job service (it loads the models, opens the job table, recovers
jobs a crash left running, starts a worker per device and the sweeper; its workers report each run to the
metrics), the batches over it and the callbacks' deliverer, and, on shutdown (SIGTERM), stops the deliverer
(what it has not delivered stays in the outbox), stops taking jobs, gives the running ones
``TILESEG_SHUTDOWN_GRACE`` seconds and puts them back in the queue past that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from tileseg import __version__
from tileseg.api import errors, routes_batches, routes_health, routes_jobs, routes_models, routes_ogc
from tileseg.api import routes_viewer as viewer
from tileseg.api.callbacks import start_deliverer
from tileseg.api.middleware import ResponseCounter
from tileseg.api.prometheus import ServiceMetrics
from tileseg.jobs.batches import BatchService
from tileseg.jobs.service import JobService
from tileseg.settings import Settings, get_settings

DESCRIPTION = """Segment arbitrarily large rasters, tile by tile, into mask GeoTIFFs.

`POST /segment` queues a job (202, `Location`); follow it at `GET /jobs/{id}`; fetch `GET /jobs/{id}/mask`.
The web page at `/` does all of this in a browser, and shows the mask over the image.
Errors are always `{"error": {"code", "message"}}`. With API keys configured, send `X-API-Key`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app, for ``settings`` (default: :func:`get_settings`, from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = ServiceMetrics()
        jobs = await run_in_threadpool(JobService, settings, on_outcome=metrics.job_finished)
        metrics.watch(jobs.count_by_status)
        app.state.metrics, app.state.jobs, app.state.batches = metrics, jobs, BatchService(jobs)
        deliverer = start_deliverer(jobs)
        try:
            yield
        finally:
            await run_in_threadpool(deliverer.stop)
            await run_in_threadpool(jobs.stop)

    app = FastAPI(title="tileseg", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.dependency_overrides[get_settings] = lambda: settings
    errors.install(app)
    app.include_router(routes_jobs.router)
    app.include_router(routes_batches.router)
    app.include_router(routes_models.router)
    app.include_router(routes_ogc.router)  # OGC API - Processes at /ogc/, over the same jobs
    viewer.install(app)  # its routes, the page at / and its assets at /ui/
    app.include_router(routes_health.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type", "Range"],
            expose_headers=["Location", "Content-Disposition", "Content-Range"],
        )
    app.add_middleware(ResponseCounter, record=lambda status: app.state.metrics.response(status))
    return app


__all__ = ["create_app"]
