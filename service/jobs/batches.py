"""Batches: many sources, one model and one set of options, submitted at once (``POST /batches``).

A batch's jobs are ordinary jobs: each source is checked exactly as a single job's ``source`` (the input roots,
the allow-list, the headers), every one of them before any job exists; then the batch and all its jobs are
written in one transaction, under the caller's limit of jobs queued or running (``TILESEG_BATCH_MAX_JOBS``),
and sent to the workers like any other (in queue mode, spread over them by the broker). A batch's status is
read from its jobs' (:func:`batch_status`); canceling it cancels the jobs not yet ended.
"""

from __future__ import annotations

import logging
from typing import Any

from tileseg.errors import TilesegError
from tileseg.jobs.batchstore import Batch
from tileseg.jobs.callbacks import FINAL, job_callbacks
from tileseg.jobs.errors import BatchTooLargeError
from tileseg.jobs.intake import JobOptions
from tileseg.jobs.service import JobService
from tileseg.jobs.store import Job, JobStatus, job_row, new_job_id
from tileseg.urls import mask_url

log = logging.getLogger(__name__)


def batch_status(counts: dict[JobStatus, int]) -> str:
    """A batch's status from its jobs': ``queued`` (none started), ``running`` (some not ended), then, once all
    have ended, ``failed`` (any failed), ``canceled`` (any canceled, none failed) or ``succeeded``."""
    waiting, running = counts.get(JobStatus.QUEUED, 0), counts.get(JobStatus.RUNNING, 0)
    ended = sum(n for status, n in counts.items() if status.finished)
    if running or (waiting and ended):
        return "running"
    if waiting:
        return "queued"
    if counts.get(JobStatus.FAILED, 0):
        return "failed"
    if counts.get(JobStatus.CANCELED, 0):
        return "canceled"
    return "succeeded"


class BatchService:
    """The batches of one server, over its :class:`~tileseg.jobs.service.JobService`."""

    def __init__(self, jobs: JobService):
        self.jobs = jobs
        self.store = jobs.store
        self.settings = jobs.settings

    def submit(
        self, model: str, options: JobOptions, sources: list[str], owner: str | None, callback: str | None = None
    ) -> tuple[Batch, list[str]]:
        """Check every source, then queue the batch and its jobs, all or nothing.

        Args:
            model: a served model.
            options: the jobs' options.
            sources: what ``POST /segment``'s ``source`` takes, one job each.
            owner: the caller's key (digest).
            callback: posted to when each job ends, and when the batch has (checked here).

        Returns:
            The batch and its job ids, in the order of ``sources``.

        Raises:
            BatchTooLargeError: more sources than ``TILESEG_BATCH_MAX_JOBS``; TooManyJobsError: the key would
            pass it with the jobs it has; CallbackNotAllowedError; ModelNotFoundError; and any error a single
            job's ``source`` meets, its message naming the source (``sources[3] (https://...)``).
        """
        limit = self.settings.batch_max_jobs
        if len(sources) > limit:
            raise BatchTooLargeError(
                f"a batch of {len(sources)} sources is more than a key may have queued or running, "
                f"{limit} (TILESEG_BATCH_MAX_JOBS): split it"
            )
        targets = job_callbacks(list(self.settings.callback_allow), callback)
        self.jobs.models.spec(model, options.prune)  # an unknown model: said once, before any source is read
        rows: list[dict[str, Any]] = []
        try:
            for index, source in enumerate(sources):
                rows.append(self._prepare(index, source, model, options, owner, targets))
            batch = {"id": new_job_id(), "owner": owner, "model": model, "callback": callback}
            created = self.store.create_batch({**batch, "options": options.to_record()}, rows, limit)
        except BaseException:
            for row in rows:
                self.jobs.discard(row["id"], owned=row["input_owned"])
            raise
        ids = [row["id"] for row in rows]
        for job_id in ids:
            self.jobs.dispatch(job_id)
        log.info("batch %s: %d jobs queued", created.id, len(ids))
        return created, ids

    def _prepare(
        self,
        index: int,
        source: str,
        model: str,
        options: JobOptions,
        owner: str | None,
        targets: dict[str, str] | None,
    ) -> dict[str, Any]:
        """One source's job row (checked as a single job's), or its error with the source named."""
        job_id = new_job_id()
        try:
            prepared = self.jobs.prepare(job_id, model, options, owner, source=source)
        except TilesegError as err:
            shown = mask_url(source) if "://" in source else source
            named = _named(err, f"sources[{index}] ({shown}): {err}")
            raise named from err
        callback = {k: v for k, v in targets.items() if k in {s.value for s in FINAL}} if targets else None
        return job_row(**prepared, callback=callback)

    def get(self, batch_id: str, owner: str | None) -> Batch:
        """The caller's batch (BatchNotFoundError for another key's, as for an unknown one)."""
        return self.store.get_batch(batch_id, owner, any_owner=False)

    def counts(self, batch: Batch) -> dict[JobStatus, int]:
        """Its jobs counted by status."""
        return self.store.batch_counts(batch.id)

    def page(self, batch: Batch, limit: int, offset: int) -> list[Job]:
        """A page of its jobs, in the order of its sources."""
        return self.store.batch_jobs(batch.id, limit, offset)

    def cancel(self, batch_id: str, owner: str | None) -> list[str]:
        """Cancel every job of the caller's batch that has not ended (finished ones keep their results);
        returns their ids."""
        batch = self.get(batch_id, owner)
        canceled = self.store.batch_job_ids(batch.id, active_only=True)
        for job_id in canceled:
            self.jobs.cancel(job_id, owner)
        return canceled


def _named(err: TilesegError, message: str) -> TilesegError:
    """``err`` again, of its own class (and so its code and status), with ``message``."""
    try:
        return type(err)(message)
    except TypeError:  # a class that takes more than a message: keep it, its message unchanged
        return err


__all__ = ["BatchService", "batch_status"]
