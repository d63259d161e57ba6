"""Sharded jobs (queue mode): one image across many workers, each shard a task of its own, the results those
of a single run.

1. **Plan.** The worker that claims the job plans it (:func:`plan_job`): the tuner's runtime, core and batch
   on its device, the bands of tile rows (:func:`tileseg.engine.shards.plan.plan_sharded`). The plan, with that
   fixed choice, and one queued row per shard go into the job table in one transaction
   (:meth:`ShardStore.plan`), then a message per shard goes to the broker. The job stays ``running``.
2. **Shards.** Any worker claims a shard (:func:`run_shard_job`), runs its band into shard files of its
   attempt (:mod:`tileseg.jobs.shards.files`) with the plan's choice, beating the shard's heart, and ends it
   by compare-and-set. A worker that dies loses only its shard: the reaper queues it again (attempts count
   per shard). A shard that fails fails the job with its reason, in the same transaction; its shard files
   are removed and nothing is published. A canceled job's shards stop at their next report.
3. **Assembly.** The shard that finishes last (one transaction decides which: :meth:`ShardStore.finish`)
   takes the job's lease and assembles (:func:`assemble_job`): the shard files streamed in order into the
   mask, probabilities and polygons, the preview and the viewer's copy, all into the job's attempt folder,
   then published exactly as a single run is (:class:`tileseg.jobs.runner.Attempt`: a compare-and-set,
   then the renames), and the shard files removed. If its worker dies, the reaper queues the job again and
   the next worker to claim it assembles it from the same shard files.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tileseg.engine.errors import CanceledError, OptionsError
from tileseg.engine.shards.plan import ShardPlan, assemble_sharded, plan_sharded, run_planned_shard
from tileseg.engine.shards.run import ShardError
from tileseg.engine.views.preview import render_preview
from tileseg.errors import TilesegError
from tileseg.jobs.errors import InterruptedJobError, JobNotFoundError, LeaseLostError, ShardStoppedError
from tileseg.jobs.files import JobFiles, drop_input
from tileseg.jobs.instances import keeps_probabilities, object_outputs
from tileseg.jobs.intake import JobOptions, pin_source
from tileseg.jobs.periodic import Periodic
from tileseg.jobs.runner import (
    Attempt,
    ModelSource,
    Outcome,
    RunConfig,
    RunStatus,
    not_ours,
    prepare_viewer,
    run_summary,
)
from tileseg.jobs.shards import files as shardfiles
from tileseg.jobs.shards.store import Shard, ShardStore
from tileseg.jobs.store import Job, JobStatus, JobStore
from tileseg.models.spec import BlendMode, ModelSpec

log = logging.getLogger(__name__)

Dispatch = Callable[[str, list[int]], None]  # (job id, shard numbers): send their messages
Stores = tuple[JobStore, ShardStore]


@dataclass(frozen=True)
class ShardCount:
    """How many shards a job is to run in, and whether that was chosen by its size (not asked for)."""

    count: int
    automatic: bool


def shard_count(job: Job, spec: ModelSpec, shard_pixels: int) -> ShardCount:
    """A job's shards: its ``shards`` option; else one per ``shard_pixels`` of input past that size, for a model
    whose tiles are exact in shards (crop mode); else 1."""
    options = JobOptions(**job.options)
    if options.shards is not None:
        return ShardCount(options.shards, automatic=False)
    if (options.blend or spec.geometry.blend) is not BlendMode.CROP:
        return ShardCount(1, automatic=True)
    pixels = int(job.input["width"]) * int(job.input["height"])
    return ShardCount(math.ceil(pixels / shard_pixels) if pixels > shard_pixels else 1, automatic=True)


def plan_job(
    stores: Stores,
    job: Job,
    load_model: ModelSource,
    config: RunConfig,
    should_stop: Callable[[], bool],
    count: ShardCount,
    dispatch: Dispatch,
) -> Outcome | None:
    """Plan a claimed job in ``count`` shards (:func:`shard_count`) and send them; None when it is better run
    whole (the image has one tile row; or an automatic choice, and the run is not exact in shards).

    Returns:
        ``planned``; or how the job ended if planning failed (the job fails with the reason).
    """
    store, shards = stores
    started = time.perf_counter()
    run = Attempt(store, job, config, should_stop)
    try:
        options = JobOptions(**job.options)
        model = load_model(job.model, options.prune)
        pin_source(job.input_path, config.source_allow)  # the host checked again, its address pinned
        segment_options = options.segment_options(config.batch, config.memory)
        plan = plan_sharded(
            model, job.input_path, count.count, segment_options, config.limits.allowed_drivers, config.limits.max_pixels
        )
    except Exception as err:  # the job's own failure: it fails with the reason, the worker carries on
        if count.automatic and isinstance(err, OptionsError):  # not exact in shards (a resampled grid): run it whole
            return _closed(run, None)
        return _closed(run, run.stopped(err))
    if plan.count == 1:
        return _closed(run, None)
    tiles = [plan.tiles(i) for i in range(plan.count)]
    if not shards.plan(job.id, job.token or "", plan.to_record(), tiles):
        return _closed(run, run.stopped(not_ours(store, job)))
    log.info(
        "job %s planned in %d shards (%s)%s",
        job.id,
        plan.count,
        plan.runtime.runtime,
        f": {plan.note}" if plan.note else "",
    )
    run.close()
    dispatch(job.id, list(range(plan.count)))
    return Outcome(RunStatus.PLANNED, time.perf_counter() - started, 0)


def _closed(run: Attempt, outcome: Outcome | None) -> Outcome | None:
    run.close()
    return outcome


class ShardHeartbeat(Periodic):
    """Renews a running shard's lease every ``interval`` seconds in a thread; :attr:`lost` once it is not
    the attempt's any more."""

    def __init__(self, shards: ShardStore, shard: Shard, interval: float):
        super().__init__(f"tileseg-shard-{shard.job_id[:8]}-{shard.number}", interval)
        self.shards = shards
        self.shard = shard
        self.lost = threading.Event()

    def step(self) -> None:
        if not self.shards.renew(self.shard):
            self.lost.set()
            self.stop()


class _ShardRun:
    """One attempt at a shard: its job, plan, files and heartbeat, and each way it can end."""

    def __init__(self, stores: Stores, shard: Shard, config: RunConfig, should_stop):
        self.store, self.shards = stores
        self.shard = shard
        self.config = config
        self.should_stop = should_stop
        self.started = time.perf_counter()
        self.job = self.store.get(shard.job_id)
        self.plan = ShardPlan.from_record(self.job.plan or {})
        self.files = JobFiles.of(config.data_dir, shard.job_id)
        self.tiles = 0
        self.heartbeat = ShardHeartbeat(self.shards, shard, config.heartbeat).start()

    @property
    def name(self) -> str:
        return f"job {self.job.id} {self.plan.describe(self.shard.number)}"

    def progress(self, done: int, total: int) -> None:
        """The engine's progress callback: the shard's tiles done, its lease renewed; raises to stop it."""
        self.tiles = done
        if self.heartbeat.lost.is_set() or not self.shards.progress(self.shard, done):
            raise self.why_stopped()
        if self.should_stop():
            raise InterruptedJobError("the worker is stopping")

    def why_stopped(self) -> TilesegError:
        """Why the attempt no longer holds its shard: the job canceled or ended, or the lease lost."""
        try:
            job = self.store.get(self.shard.job_id)
        except JobNotFoundError:
            return CanceledError(f"job {self.shard.job_id} is gone")
        if job.status is JobStatus.CANCELED:
            return CanceledError(f"job {job.id} was canceled")
        if job.status.finished:
            return ShardStoppedError(f"job {job.id} {job.status.value} without this shard")
        return LeaseLostError(f"{self.name} is under another attempt")

    def stopped(self, err: Exception) -> Outcome:
        """End the attempt that ``err`` stopped; a failure of its own fails the shard and its job."""
        shard = self.shard
        if isinstance(err, CanceledError):
            log.info("%s stops: the job was canceled", self.name)
            self.files.remove()
            shardfiles.remove_all(self.files, self.config.objects)
            return self.outcome(RunStatus.CANCELED, "canceled")
        self.discard()
        if isinstance(err, (LeaseLostError, ShardStoppedError)):
            log.warning("%s stops: %s", self.name, err)
            return self.outcome(RunStatus.LOST, err.code)
        if isinstance(err, InterruptedJobError):
            log.info("%s goes back to the queue: the worker is stopping", self.name)
            self.shards.release(shard)
            return self.outcome(RunStatus.INTERRUPTED, "interrupted")
        if isinstance(err, TilesegError):
            code, reason = err.code, str(err)
        else:
            log.error("%s failed unexpectedly", self.name, exc_info=err)
            code, reason = ShardError.code, f"{type(err).__name__}: {err}"
        message = f"{self.plan.describe(shard.number)} failed: {reason}"
        if not self.shards.fail(shard, code, message):
            return self.stopped(self.why_stopped())
        log.info("job %s failed: %s", self.job.id, message)
        shardfiles.remove_all(self.files, self.config.objects)  # nothing of a failed job is kept
        drop_input(self.job, self.config.keep_inputs, self.config.objects)
        return self.outcome(RunStatus.FAILED, code)

    def discard(self) -> None:
        """Remove what this attempt wrote."""
        shardfiles.remove_attempt(self.files, self.shard.number, self.shard.token or "", self.config.objects)

    def outcome(self, status: RunStatus, code: str | None = None) -> Outcome:
        return Outcome(status, time.perf_counter() - self.started, self.tiles, code)


def run_shard_job(
    stores: Stores,
    shard: Shard,
    load_model: ModelSource,
    config: RunConfig,
    should_stop: Callable[[], bool],
    worker: str,
) -> Outcome:
    """Run a shard this worker has claimed (``shard.token`` is its attempt) and end it; the last shard of
    its job to finish assembles the job (:func:`assemble_job`). Never raises for the job's own failures."""
    run = _ShardRun(stores, shard, config, should_stop)
    job = run.job
    try:
        options = JobOptions(**job.options)
        model = load_model(job.model, options.prune)
        pin_source(job.input_path, config.source_allow)  # the host checked again, its address pinned
        folder = shardfiles.make_attempt_folder(run.files, shard.number, shard.token or "")
        result = run_planned_shard(
            model,
            job.input_path,
            run.plan,
            shard.number,
            folder,
            options.segment_options(config.batch, config.memory),
            probabilities=keeps_probabilities(options, model.spec),
            progress=run.progress,
            allowed_drivers=config.limits.allowed_drivers,
            max_pixels=config.limits.max_pixels,
        )
        shardfiles.put_attempt(run.files, shard.number, shard.token or "", config.objects)
    except Exception as err:  # the job's failure, or the shard's end: never the worker's
        return run.stopped(err)
    finally:
        run.heartbeat.stop()
    ended, last = run.shards.finish(shard, shardfiles.result_record(result), worker)
    if not ended:
        return run.stopped(run.why_stopped())
    log.info("%s done: %d tiles in %.1f s", run.name, result.tiles_total, result.seconds)
    if not last:
        return run.outcome(RunStatus.SHARD_DONE)
    log.info("job %s: its last shard is done; assembling", job.id)
    return assemble_job(stores, run.store.get(job.id), load_model, config, should_stop)


def assemble_job(
    stores: Stores,
    job: Job,
    load_model: ModelSource,
    config: RunConfig,
    should_stop: Callable[[], bool],
) -> Outcome:
    """Assemble a sharded job whose shards are all done, as the attempt that holds it (``job.token``), and
    publish it as a single run is published; the shard files are removed once the job has ended."""
    store, shards = stores
    run = Attempt(store, job, config, should_stop)
    attempt = run.attempt
    try:
        options = JobOptions(**job.options)
        model = load_model(job.model, options.prune)
        pin_source(job.input_path, config.source_allow)  # the host checked again, its address pinned
        results = [shardfiles.shard_result(run.files, shard, config.objects) for shard in shards.list(job.id)]
        attempt.root.mkdir(parents=True, exist_ok=True)
        result = assemble_sharded(
            model,
            job.input_path,
            ShardPlan.from_record(job.plan or {}),
            results,
            attempt.mask,
            options.segment_options(config.batch, config.memory),
            probabilities=attempt.probabilities if options.probabilities else None,
            vectors=attempt.vectors if options.vectors else None,
            allowed_drivers=config.limits.allowed_drivers,
            max_pixels=config.limits.max_pixels,
            **object_outputs(options, attempt),
        )
        render_preview(attempt.mask, attempt.preview)
        if config.view_copies:
            prepare_viewer(job, job.input_path, attempt, options)
    except Exception as err:  # an assembly that fails fails the job with the reason
        outcome = run.stopped(err)
    else:
        outcome = run.publish(run_summary(result))
    finally:
        run.close()
    if outcome.status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED):
        shardfiles.remove_all(run.files, config.objects)
    return outcome


__all__ = [
    "Dispatch",
    "ShardCount",
    "ShardHeartbeat",
    "Stores",
    "assemble_job",
    "plan_job",
    "run_shard_job",
    "shard_count",
]
