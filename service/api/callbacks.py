"""The callbacks' deliverer of this server (:mod:`tileseg.jobs.deliverer`), with the bodies the API shows: a job
as ``GET /jobs/{id}``, a batch as ``GET /batches/{id}`` (its first page of jobs)."""

from __future__ import annotations

from typing import Any

from tileseg.api.batch_schemas import BatchOut
from tileseg.api.schemas import JobOut
from tileseg.jobs.batchstore import Batch
from tileseg.jobs.deliverer import Deliverer
from tileseg.jobs.service import JobService
from tileseg.jobs.store import Job

BATCH_PAGE = 100  # a batch's callback carries its first page of jobs, as GET /batches/{id} does by default


class _Idle:
    """What runs when the server posts no callbacks (TILESEG_CALLBACK_ALLOW is empty)."""

    def stop(self) -> bool:
        return True


def start_deliverer(jobs: JobService) -> Deliverer | _Idle:
    """Start posting the callbacks of ``jobs``' table, when the server has callbacks (TILESEG_CALLBACK_ALLOW)."""
    if not jobs.settings.callback_allow:
        return _Idle()

    def show_job(job: Job) -> dict[str, Any]:
        return JobOut.of(job).model_dump(mode="json", by_alias=True)

    def show_batch(batch: Batch) -> dict[str, Any]:
        page = jobs.store.batch_jobs(batch.id, BATCH_PAGE, 0)
        shown = BatchOut.of(batch, jobs.store.batch_counts(batch.id), page, BATCH_PAGE, 0)
        return shown.model_dump(mode="json", by_alias=True)

    return Deliverer(jobs.store, jobs.settings, show_job, show_batch).start()


__all__ = ["start_deliverer"]
