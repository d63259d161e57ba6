"""Models: the served models' cards, the same JSON as ``tileseg models --json``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from tileseg.api.deps import JobsDep, get_owner
from tileseg.api.errors import ERROR_RESPONSES

router = APIRouter(tags=["models"], dependencies=[Depends(get_owner)])  # keys, when the server has them


@router.get("/models", summary="The served models", responses={401: ERROR_RESPONSES[401]})
def list_models(jobs: JobsDep) -> dict[str, Any]:
    """``{"models": [card, ...]}``, exactly as ``tileseg models --json`` prints it."""
    return {"models": [jobs.models.describe(name) for name in jobs.models.names]}


@router.get("/models/{name}", summary="One model's card", responses={s: ERROR_RESPONSES[s] for s in (401, 404)})
def get_model(name: str, jobs: JobsDep) -> dict[str, Any]:
    """One entry of ``GET /models``, with ``runtime``: how it runs on this server with default options
    (runtime, tile, window, batch, measured Mpx/s), once a job has measured it here; null before, and in
    queue mode (each job's ``result.runtime`` says what its worker ran)."""
    return {**jobs.models.describe(name), "runtime": jobs.models.runtime(name)}


__all__ = ["router"]
