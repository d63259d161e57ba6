"""The JSON shapes of ``/batches``: the request (a model, the options of ``POST /segment``, and ``sources`` or a
``stac_search``), the answer to it, and a batch as ``GET /batches/{id}`` shows it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tileseg.api.errors import RequestError, describe_validation
from tileseg.api.schemas import JobOut
from tileseg.jobs.batches import batch_status
from tileseg.jobs.batchstore import Batch
from tileseg.jobs.intake import JobOptions, JobOptionsRecord, form_fields
from tileseg.jobs.store import Job, JobStatus
from tileseg.urls import mask_url

MAX_SOURCE = 4096  # characters of one source, as POST /segment's `source`


class StacSearch(BaseModel):
    """A STAC API search whose items become the batch's sources (each item's own URL, as a ``source``)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="The STAC API's root (its /search under a prefix).")
    collections: list[str] | None = Field(None, description="The collections searched.")
    bbox: list[float] | None = Field(None, min_length=4, max_length=6, description="west, south, east, north.")
    datetime: str | None = Field(None, max_length=200, description="An instant or an interval (RFC 3339, `/`).")
    query: dict[str, Any] | None = Field(None, description="The STAC query extension's filter on properties.")
    limit: int | None = Field(None, ge=1, description="At most this many items (default: TILESEG_BATCH_MAX_JOBS).")


class BatchRequest(BaseModel):
    """``POST /batches``: the fields besides the options."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="A served model (GET /models).")
    sources: list[str] | None = Field(
        None, min_length=1, description="What POST /segment's `source` takes (paths, raster or STAC item URLs)."
    )
    stac_search: StacSearch | None = Field(None, description="Instead of `sources`: a STAC API search.")
    callback: str | None = Field(
        None,
        max_length=2048,
        description="Posted to when each job ends, then when the batch has (under TILESEG_CALLBACK_ALLOW).",
    )

    @classmethod
    def parse(cls, body: Any) -> tuple[BatchRequest, JobOptions]:
        """The request's own fields and the jobs' options (every other field of the body).

        Raises:
            RequestError: not an object, an unknown or invalid field, not exactly one of sources and stac_search.
        """
        if not isinstance(body, dict):
            raise RequestError('a batch is a JSON object: {"model": ..., "sources": [...]}')
        own = {k: v for k, v in body.items() if k in cls.model_fields}
        options = {k: v for k, v in body.items() if k not in cls.model_fields}
        unknown = sorted(set(options) - set(form_fields()))
        if unknown:
            raise RequestError(f"{unknown[0]}: not a field of a batch (model, sources, stac_search, callback, options)")
        try:
            request, job_options = cls(**own), JobOptions(**options)
        except ValidationError as err:
            raise RequestError(describe_validation(err.errors())) from None
        if (request.sources is None) == (request.stac_search is None):
            raise RequestError("give exactly one of `sources` (a list) and `stac_search` (an object)")
        long = [i for i, s in enumerate(request.sources or []) if not s or len(s) > MAX_SOURCE]
        if long:
            raise RequestError(f"sources[{long[0]}]: a source has 1 to {MAX_SOURCE} characters")
        return request, job_options


class BatchLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    next: str | None = Field(None, description="The next page of jobs; null on the last.")
    prev: str | None = Field(None, description="The page before; null on the first.")


class BatchCounts(BaseModel):
    """A batch's jobs by status."""

    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int
    expired: int


class BatchCreated(BaseModel):
    """The answer to ``POST /batches``."""

    id: str
    status: str
    size: int
    job_ids: list[str] = Field(description="The jobs, one per source, in the order of the sources.")
    links: BatchLinks


class BatchOut(BaseModel):
    """A batch as ``GET /batches/{id}`` returns it: a page of its jobs."""

    id: str
    status: str = Field(description="queued | running | succeeded | failed (any failed) | canceled (any canceled)")
    model: str
    options: JobOptionsRecord
    size: int = Field(description="How many jobs it has.")
    counts: BatchCounts
    created: datetime
    callback: str | None = Field(description="Its callback URL (masked), or null.")
    jobs: list[JobOut]
    limit: int
    offset: int
    links: BatchLinks

    @classmethod
    def of(
        cls, batch: Batch, counts: dict[JobStatus, int], jobs: list[Job], limit: int, offset: int, base: str = ""
    ) -> BatchOut:
        """The API's view of a batch, with one page of its jobs; ``base`` is the app's root path."""
        return cls(
            id=batch.id,
            status=batch_status(counts),
            model=batch.model,
            options=JobOptionsRecord(**JobOptions(**batch.options).to_record()),
            size=batch.size,
            counts=BatchCounts(**{status.value: n for status, n in counts.items()}),
            created=datetime.fromtimestamp(batch.created, tz=timezone.utc),
            callback=mask_url(batch.callback) if batch.callback else None,
            jobs=[JobOut.of(job, base) for job in jobs],
            limit=limit,
            offset=offset,
            links=page_links(f"{base}/batches/{batch.id}", batch.size, limit, offset),
        )


def page_links(url: str, size: int, limit: int, offset: int) -> BatchLinks:
    """The batch's URL, and those of the pages of ``limit`` jobs after and before the one at ``offset``."""
    after = offset + limit
    return BatchLinks(
        self_=f"{url}?limit={limit}&offset={offset}",
        next=f"{url}?limit={limit}&offset={after}" if after < size else None,
        prev=f"{url}?limit={limit}&offset={max(offset - limit, 0)}" if offset > 0 else None,
    )


__all__ = ["BatchCounts", "BatchCreated", "BatchLinks", "BatchOut", "BatchRequest", "StacSearch", "page_links"]
