"""Batches: many sources segmented with one model and one set of options (``POST /batches``), followed
together (``GET /batches/{id}``) and canceled together (``DELETE /batches/{id}``). The jobs are ordinary jobs
(:mod:`tileseg.jobs.batches`)."""

from __future__ import annotations

import json
import uuid
from typing import Annotated
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tileseg.api.batch_schemas import BatchCreated, BatchOut, BatchRequest, StacSearch, page_links
from tileseg.api.deps import BatchesDep, OwnerDep, SettingsDep
from tileseg.api.errors import ERROR_RESPONSES, RequestError
from tileseg.jobs.allowlist import allowed_url
from tileseg.settings import Settings

router = APIRouter(tags=["batches"])
MAX_BODY = 4 << 20  # bytes of a batch request: some thousands of sources


def _errors(*statuses: int) -> dict:
    return {s: ERROR_RESPONSES[s] for s in statuses}


@router.post(
    "/batches",
    status_code=202,
    response_model=BatchCreated,
    summary="Segment many images (a batch of jobs)",
    responses={
        202: {"headers": {"Location": {"description": "The batch's URL.", "schema": {"type": "string"}}}},
        **_errors(400, 401, 404, 413, 415, 422, 429, 502, 503),
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": BatchRequest.model_json_schema()}}}
    },
)
async def submit_batch(
    request: Request, response: Response, batches: BatchesDep, owner: OwnerDep, settings: SettingsDep
) -> BatchCreated:
    """Queue one job per source (or per item a STAC search finds), each checked as `POST /segment`'s `source`,
    all of them before any job exists; besides `model`, `sources` or `stac_search` and `callback`, the body takes
    the options of `POST /segment` as JSON values."""
    declared = request.headers.get("content-length", "")
    body = b"" if declared.isdigit() and int(declared) > MAX_BODY else await request.body()
    if not body or len(body) > MAX_BODY:
        raise RequestError(f"a batch request is a JSON object of at most {MAX_BODY} bytes: split larger batches")
    try:
        data = json.loads(body)
    except ValueError:
        raise RequestError("a batch request is JSON") from None
    fields, options = BatchRequest.parse(data)
    sources = fields.sources or []
    if fields.stac_search is not None:  # each item's asset is the source: `asset` chose it, and is used up
        sources = await run_in_threadpool(stac_sources, fields.stac_search, settings, options.asset)
        options = options.model_copy(update={"asset": None})
    batch, ids = await run_in_threadpool(batches.submit, fields.model, options, sources, owner, fields.callback)
    url = f"{request.scope.get('root_path', '')}/batches/{batch.id}"
    response.headers["Location"] = url
    return BatchCreated(id=batch.id, status="queued", size=batch.size, job_ids=ids, links=page_links(url, 0, 100, 0))


@router.get("/batches/{batch_id}", response_model=BatchOut, summary="A batch", responses=_errors(400, 401, 404))
def get_batch(
    request: Request,
    batch_id: uuid.UUID,
    batches: BatchesDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> BatchOut:
    """The batch: its status, its jobs counted by status, and a page of its jobs in the order of its sources
    (`links.next` and `links.prev` page through them)."""
    batch = batches.get(str(batch_id), owner)
    base = request.scope.get("root_path", "")
    return BatchOut.of(batch, batches.counts(batch), batches.page(batch, limit, offset), limit, offset, base)


@router.delete(
    "/batches/{batch_id}",
    status_code=204,
    response_class=Response,
    summary="Cancel a batch",
    responses=_errors(400, 401, 404),
)
def cancel_batch(batch_id: uuid.UUID, batches: BatchesDep, owner: OwnerDep) -> Response:
    """Cancel every job of the batch that is queued or running (running ones stop at their next batch of
    tiles); jobs that have ended keep their results."""
    batches.cancel(str(batch_id), owner)
    return Response(status_code=204)


def stac_sources(search: StacSearch, settings: Settings, asset: str | None) -> list[str]:
    """The sources a STAC API search gives: of each item it finds, the URL of the asset named ``asset`` (the
    item's only asset without it); a ``file:`` URL as its path. Each is then checked as any source is.

    A STAC API serves its items at URLs that do not end in ``.json``, which ``source`` does not read as items:
    so the batch's jobs read the assets themselves. The search endpoint (``url`` + ``/search``) must lie under a
    prefix of ``TILESEG_SOURCE_ALLOW``, checked before the API is asked anything.

    Raises:
        SourceNotAllowedError; StacApiError, UnknownCollectionError, NoInputsError (the search's own);
        RequestError: an item without that asset, or with several and no ``asset`` named.
    """
    allowed_url(search.url.rstrip("/") + "/search", list(settings.source_allow), what="`stac_search.url`")
    from tileseg.cohorts.stac_search import search_items  # pystac-client: imported where it is used

    most = min(search.limit or settings.batch_max_jobs + 1, settings.batch_max_jobs + 1)
    items = search_items(search.url, search.collections, search.bbox, search.datetime, search.query, most)
    sources = []
    for item in items:
        names = sorted(item.assets)
        chosen = asset if asset is not None else (names[0] if len(names) == 1 else None)
        if chosen not in item.assets:
            hint = f"it has no asset {asset!r}" if asset is not None else "name one with `asset`"
            raise RequestError(f"STAC item {item.id} has the assets {', '.join(names) or 'none'}: {hint}")
        href = item.assets[str(chosen)].get_absolute_href() or item.assets[str(chosen)].href
        parts = urlsplit(href)
        sources.append(unquote(parts.path) if parts.scheme == "file" and parts.netloc in ("", "localhost") else href)
    return sources


__all__ = ["router", "stac_sources"]
