"""Health and metrics: ``/livez`` (the process answers), ``/readyz`` (it can take jobs), ``/metrics``.

The probes are open even when the server has API keys (orchestrators call them); ``/metrics`` is not.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tileseg.api.deps import JobsDep, MetricsDep, get_owner
from tileseg.api.errors import ERROR_RESPONSES
from tileseg.api.prometheus import CONTENT_TYPE

router = APIRouter(tags=["health"])

_READY_EXAMPLE = {"status": "ready", "checks": {"models": True, "store": True, "disk": True, "workers": True}}


@router.get("/livez", summary="The process is alive")
def livez() -> dict[str, str]:
    """Always ``{"status": "alive"}`` while the server answers."""
    return {"status": "alive"}


@router.get(
    "/readyz",
    summary="The server can take jobs",
    responses={
        200: {"content": {"application/json": {"example": _READY_EXAMPLE}}},
        503: {
            "description": "Not ready: the failing checks are false.",
            "content": {"application/json": {"schema": {"type": "object", "required": ["error", "checks"]}}},
        },
    },
)
async def readyz(jobs: JobsDep) -> JSONResponse:
    """Models loaded, the job table writable, enough free disk, the workers alive; in queue mode the
    model cards read and the broker answering instead of models and workers."""
    checks = await run_in_threadpool(jobs.readiness)
    if all(checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    return JSONResponse(
        {"error": {"code": "not_ready", "message": f"failing checks: {failing}"}, "checks": checks}, status_code=503
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    dependencies=[Depends(get_owner)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}, 401: ERROR_RESPONSES[401]},
)
async def metrics(service_metrics: MetricsDep) -> Response:
    """Jobs by state, queue depth, job seconds, tiles per second, responses by status code."""
    body = await run_in_threadpool(service_metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


__all__ = ["router"]
