"""The job function: run one claimed job through the engine and record what happened in the job table.

It knows nothing of HTTP or of how it was called: the embedded worker thread and the Celery queue worker
(:mod:`tileseg.jobs.queue`) both claim a job and call it, with everything it needs as arguments. Its
progress callback is the job's line to the table, and stops the run when the job is no longer the
attempt's or the worker is stopping; its :class:`Heartbeat` holds the lease between reports; a success is
committed in the table before its files are published. Why that keeps every job: :mod:`tileseg.jobs`.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from tileseg import objectstore
from tileseg.engine import SegmentResult, segment
from tileseg.engine.errors import CanceledError
from tileseg.engine.io.inputs import locate
from tileseg.engine.io.stac import StacSource
from tileseg.engine.results import RunResult
from tileseg.engine.views.preview import render_preview
from tileseg.engine.views.render import add_overviews, write_view
from tileseg.errors import TilesegError
from tileseg.jobs.errors import InterruptedJobError, JobNotFoundError, LeaseLostError
from tileseg.jobs.files import JobFiles, drop_input
from tileseg.jobs.instances import object_outputs
from tileseg.jobs.intake import InputLimits, JobOptions, pin_source
from tileseg.jobs.objects import ObjectResults
from tileseg.jobs.periodic import Periodic
from tileseg.jobs.store import Job, JobStatus, JobStore
from tileseg.settings import Settings

log = logging.getLogger(__name__)

ModelSource = Callable[[str, "int | None"], nn.Module]  # (name, prune) -> the loaded network


@dataclass(frozen=True)
class RunConfig:
    """How jobs are run: what the worker's settings say."""

    data_dir: Path  # where the job folders lie on this machine (with results in S3: scratch space)
    result_ttl: float  # seconds
    limits: InputLimits = InputLimits()
    batch: int | None = None
    memory: str | None = None  # the forward's budget (TILESEG_MEMORY_BUDGET)
    keep_inputs: bool = False
    view_copies: bool = True  # the viewer's base layer, and overviews on the mask
    heartbeat: float = 10.0  # seconds between lease renewals; well inside the lease
    objects: ObjectResults | None = None  # uploads and results in S3 (TILESEG_RESULTS_URL), or on disk
    source_allow: tuple[str, ...] = ()  # TILESEG_SOURCE_ALLOW: a remote source's host is checked again to read it

    @classmethod
    def of(cls, settings: Settings) -> RunConfig:
        """How the service's settings say jobs are run."""
        limits = InputLimits(max_pixels=settings.max_pixels, max_untiled_pixels=settings.max_untiled_pixels)
        return cls(
            data_dir=settings.files_dir.resolve(),
            result_ttl=settings.result_ttl.total_seconds(),
            limits=limits,
            batch=settings.batch,
            memory=settings.memory_budget,
            keep_inputs=settings.keep_inputs,
            view_copies=settings.view_copies,
            heartbeat=settings.heartbeat,
            source_allow=tuple(settings.source_allow),
            objects=ObjectResults(settings.results_url) if settings.results_in_s3 and settings.results_url else None,
        )


class RunStatus(str, enum.Enum):
    """How a run ended: the job succeeded, failed or was canceled; or the attempt let go of it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    INTERRUPTED = "interrupted"  # the worker is stopping: the job is back in the queue
    LOST = "lost"  # the lease ran out: another attempt has the job
    PLANNED = "planned"  # planned in shards, each now a task of its own (tileseg.jobs.shards.run)
    SHARD_DONE = "shard_done"  # a shard finished, and other shards of its job had not


@dataclass(frozen=True)
class Outcome:
    """How a run ended, for the worker's metrics and logs."""

    status: RunStatus
    seconds: float
    tiles: int
    error_code: str | None = None


class Heartbeat(Periodic):
    """Renews a running attempt's lease every ``interval`` seconds in a thread, until stopped.

    :attr:`lost` turns true when a renewal finds that the attempt no longer owns its job (canceled, or
    handed to another attempt), and the beats stop; a database that does not answer is tried again at the
    next beat, as the lease may well still hold.
    """

    def __init__(self, store: JobStore, job: Job, interval: float):
        super().__init__(f"tileseg-heartbeat-{job.id[:8]}", interval)
        self.store = store
        self.job = job
        self._lost = threading.Event()

    @property
    def lost(self) -> bool:
        """Whether a renewal found the job no longer this attempt's."""
        return self._lost.is_set()

    def step(self) -> None:
        """Renew the lease once."""
        if not self.store.renew(self.job.id, self.job.token):
            self._lost.set()
            self.stop()


def run_job(
    store: JobStore,
    job: Job,
    load_model: ModelSource,
    config: RunConfig,
    should_stop: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Run a job that this worker has claimed (``job.token`` is its attempt), to the end.

    Never raises for a job's own failure: bad input and unexpected errors alike fail the job with a
    reason, so that the caller carries on with the next one.

    Args:
        store: the job table.
        job: the claimed job (its token is this attempt's).
        load_model: ``(name, prune) -> network``.
        config: how to run jobs.
        should_stop: polled after every batch; True sends the job back to the queue (a worker stopping).

    Returns:
        How the run ended (:class:`RunStatus`).
    """
    run = Attempt(store, job, config, should_stop)
    attempt, progress = run.attempt, run.progress
    try:
        try:
            options = JobOptions(**job.options)
            model = load_model(job.model, options.prune)
            segment_options = options.segment_options(config.batch, config.memory)
            attempt.root.mkdir(parents=True, exist_ok=True)
            source = run.input()
            result = segment(
                model,
                source,
                attempt.mask,
                segment_options,
                probabilities=attempt.probabilities if options.probabilities else None,
                vectors=attempt.vectors if options.vectors else None,
                **object_outputs(options, attempt),
                progress=progress,
                allowed_drivers=config.limits.allowed_drivers,
                max_pixels=config.limits.max_pixels,
            )
            render_preview(attempt.mask, attempt.preview)
            if config.view_copies:
                prepare_viewer(job, source, attempt, options)
        except Exception as err:  # a bug in one job included: it must not take the worker down
            return run.stopped(err)
        return run.publish(run_summary(result))
    finally:
        run.close()


def run_summary(result: SegmentResult) -> dict[str, Any]:
    """What the job record keeps of a finished run (``GET /jobs/{id}``'s ``result``, a :class:`RunResult` as
    JSON): the pixel sizes, the level read and why, the region of interest's share, the tiles run and skipped,
    the warnings and how the network ran; and, on an instance run, the objects found per class (``objects``)."""
    runtime = result.runtime
    summary = RunResult(
        pixel_size=result.pixel_size,
        roi=result.roi,
        tiles_total=result.tiles_total,
        tiles_skipped=result.tiles_skipped,
        seconds=round(result.seconds, 3),
        warnings=list(result.warnings),
        runtime={**runtime.tuning, "window": runtime.window, "tile": runtime.tile},
    ).model_dump(mode="json")
    return {**summary, "objects": result.objects} if result.objects is not None else summary


def prepare_viewer(job: Job, source: str, attempt: JobFiles, options: JobOptions) -> None:
    """The web viewer's files: a view copy of the input (its base layer, kept after the upload goes) and
    overviews on the mask. The mask stands without them: a failure here is logged, not the job's."""
    try:
        add_overviews(attempt.mask)
        where = locate(source, options.asset, options.bands)
        if isinstance(where, StacSource) and where.names:  # a stack of assets: no one raster to copy
            log.info("job %s: no view copy of a stack of STAC assets; the viewer shows the mask", job.id)
            return
        if isinstance(where, StacSource):  # one asset: its raster, as the run read it
            source = where.assets()[0].href
        write_view(source, attempt.view, options.bands)
    except Exception:  # the viewer then shows the mask only, or nothing; the results are whole
        log.warning("job %s: no view copy of the input for the viewer", job.id, exc_info=True)
        attempt.view.unlink(missing_ok=True)


class Attempt:
    """One run of a claimed job: its files, its heartbeat, the tiles done so far, and each way it can end."""

    def __init__(self, store: JobStore, job: Job, config: RunConfig, should_stop: Callable[[], bool]):
        self.store = store
        self.job = job
        self.config = config
        self.should_stop = should_stop
        self.started = time.perf_counter()
        self.files = JobFiles.of(config.data_dir, job.id)
        self.attempt = self.files.attempt(job.token)  # where this attempt writes before it publishes
        self.tiles = 0
        self.heartbeat = Heartbeat(store, job, config.heartbeat).start()
        self.objects = config.objects

    def input(self) -> str:
        """The input as this attempt reads it: an upload kept in S3 is fetched into the attempt's scratch
        folder first (the whole file, as the client sent it); anything else is read where it is."""
        if self.objects is None or not self.objects.is_own_input(self.job):
            pin_source(self.job.input_path, self.config.source_allow)  # checked again, its address pinned
            return self.job.input_path
        return str(objectstore.download(self.objects.input(self.job.id), self.attempt.root / "input"))

    def progress(self, tiles_done: int, tiles_total: int) -> None:
        """The engine's progress callback: record the tiles done and renew the lease.

        Raises:
            CanceledError, LeaseLostError: the job is no longer this attempt's.
            InterruptedJobError: the worker is stopping.
        """
        self.tiles = tiles_done
        if self.heartbeat.lost or not self.store.progress(self.job.id, self.job.token, tiles_done, tiles_total):
            raise not_ours(self.store, self.job)
        if self.should_stop():
            raise InterruptedJobError("the worker is stopping")

    def stopped(self, err: Exception) -> Outcome:
        """End the run that ``err`` stopped: canceled, lost, interrupted (the job is queued again), or failed
        (the product's errors with their own code, anything else as ``internal_error``)."""
        job = self.job
        if isinstance(err, CanceledError):
            log.info("job %s canceled", job.id)
            self._remove_all()
            return self._outcome(RunStatus.CANCELED, "canceled")
        if isinstance(err, LeaseLostError):
            log.warning("job %s: this attempt lost its lease (another attempt has the job); it stops", job.id)
            return self._outcome(RunStatus.LOST, LeaseLostError.code)
        if isinstance(err, InterruptedJobError):
            log.info("job %s goes back to the queue: the worker is stopping", job.id)
            self.store.release(job.id, job.token)
            return self._outcome(RunStatus.INTERRUPTED, "interrupted")
        if isinstance(err, TilesegError):
            log.info("job %s failed: %s", job.id, err)
            return self._fail(err.code, str(err))
        log.error("job %s failed unexpectedly", job.id, exc_info=err)
        return self._fail("internal_error", f"unexpected error: {type(err).__name__}: {err}")

    def publish(self, summary: dict[str, Any]) -> Outcome:
        """End the run that made its results: commit the success with the run's ``summary`` in the table,
        then move the files into place and drop the upload. With results in S3, the files are put under the
        attempt's own keys first: the commit then names them, and nothing moves after it."""
        job = self.job
        if self.objects is not None:
            try:
                self.objects.stage(job.id, job.token or "", self.attempt.root)
            except objectstore.ObjectStoreError as err:
                self.objects.remove_attempt(job.id, job.token or "")
                return self.stopped(err)
        self.heartbeat.stop()  # before the end: a beat after it would read as a lost lease
        if not self.store.finish(job.id, job.token, JobStatus.SUCCEEDED, ttl=self.config.result_ttl, result=summary):
            if self.objects is not None:
                self.objects.remove_attempt(job.id, job.token or "")
            return self._ended_elsewhere()
        # the table now names this attempt as the published one; the renames follow (anyone may redo them;
        # results in S3 are served from the published attempt's keys: nothing moves)
        if self.objects is None:
            self.files.publish(job.token or "")
        log.info(
            "job %s published by attempt %s: %d tiles in %.1f s",
            job.id,
            job.token,
            self.tiles,
            time.perf_counter() - self.started,
        )
        drop_input(job, self.config.keep_inputs, self.objects)
        return self._outcome(RunStatus.SUCCEEDED)

    def close(self) -> None:
        """Stop the heartbeat; remove this attempt's working files, whatever happened."""
        self.heartbeat.stop()
        self.files.remove_attempt(self.job.token or "")
        if self.objects is not None:  # this machine's folder of the job was scratch space only
            try:
                self.files.root.rmdir()
            except OSError:  # another attempt's folder is still in it, or it is gone already
                pass

    def _fail(self, code: str, message: str) -> Outcome:
        if not self.store.finish(self.job.id, self.job.token, JobStatus.FAILED, error=(code, message)):
            return self._ended_elsewhere()
        drop_input(self.job, self.config.keep_inputs, self.objects)
        return self._outcome(RunStatus.FAILED, code)

    def _ended_elsewhere(self) -> Outcome:
        # the compare-and-set found the job no longer this attempt's: canceled, or gone to another attempt
        if isinstance(not_ours(self.store, self.job), CanceledError):
            self._remove_all()  # a canceled job keeps nothing, not even its upload
            return self._outcome(RunStatus.CANCELED, "canceled")
        return self._outcome(RunStatus.LOST, LeaseLostError.code)

    def _remove_all(self) -> None:
        """Remove everything of the job: its folder here and, with results in S3, its objects."""
        self.files.remove()
        if self.objects is not None:
            try:
                self.objects.remove(self.job.id)
            except objectstore.ObjectStoreError:  # the sweeper finds a canceled job's objects again
                log.warning("job %s: its objects were not removed", self.job.id, exc_info=True)

    def _outcome(self, status: RunStatus, code: str | None = None) -> Outcome:
        return Outcome(status, time.perf_counter() - self.started, self.tiles, code)


def not_ours(store: JobStore, job: Job) -> TilesegError:
    """Why the attempt no longer owns its job: canceled (or deleted), or its lease ran out."""
    try:
        now = store.get(job.id)
    except JobNotFoundError:
        return CanceledError(f"job {job.id} is gone")
    if now.status is JobStatus.CANCELED:
        return CanceledError(f"job {job.id} was canceled")
    return LeaseLostError(f"job {job.id} is {now.status.value} under another attempt")


__all__ = [
    "Attempt",
    "Heartbeat",
    "ModelSource",
    "Outcome",
    "RunConfig",
    "RunStatus",
    "not_ours",
    "prepare_viewer",
    "run_job",
    "run_summary",
]
