"""The job function: run one claimed job through the engine and record what happened in the job table.

It knows nothing of HTTP or of how it was called: the embedded worker thread calls it, and a queue worker
(Celery) can call it the same way after claiming the job. Everything it needs comes in as arguments.

The progress callback is the job's line to the table: after each batch it records the tiles done (which
beats the job's heartbeat) and learns whether the attempt still owns the job. A job canceled meanwhile
makes the record fail, and the callback raises :class:`CanceledError`, which stops the engine at once (it
removes its partial output). A worker that is stopping raises :class:`InterruptedJobError` the same way,
and the job goes back to the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..engine import segment, tile_settings
from ..errors import CanceledError, InterruptedJobError, TilesegError
from ..preview import render_preview
from ..tiling import TilePlan
from .files import JobFiles
from .intake import InputLimits, JobOptions
from .store import Job, JobStatus, JobStore

log = logging.getLogger(__name__)

ModelSource = Callable[[str, "int | None"], nn.Module]  # (name, prune) -> the loaded network


@dataclass(frozen=True)
class RunConfig:
    """How jobs are run: what the worker's settings say."""

    data_dir: Path
    result_ttl: float  # seconds
    limits: InputLimits = InputLimits()
    batch: int = 4
    keep_inputs: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a run ended, for the worker's metrics and logs."""

    status: str  # succeeded, failed, canceled, interrupted, lost
    seconds: float
    tiles: int
    error_code: str | None = None


def run_job(store: JobStore, job: Job, load_model: ModelSource, config: RunConfig,
            should_stop: Callable[[], bool] = lambda: False) -> Outcome:
    """Run a job that this worker has claimed (``job.token`` is its attempt), to the end.

    Never raises for a job's own failure: bad input and unexpected errors alike fail the job with a
    reason, so that the caller carries on with the next one.
    """
    started = time.perf_counter()
    files = JobFiles.of(config.data_dir, job.id)
    done = 0

    def progress(tiles_done: int, tiles_total: int) -> None:
        nonlocal done
        done = tiles_done
        if not store.progress(job.id, job.token, tiles_done, tiles_total):
            raise CanceledError(f"job {job.id} was canceled")
        if should_stop():
            raise InterruptedJobError("the worker is stopping")

    def outcome(status: str, code: str | None = None) -> Outcome:
        return Outcome(status, time.perf_counter() - started, done, code)

    try:
        options = JobOptions(**job.options)
        model = load_model(job.model, options.prune)
        segment_options = options.segment_options(config.batch)
        total = len(TilePlan(tile_settings(model.spec, segment_options), job.input["height"], job.input["width"]))
        progress(0, total)
        files.root.mkdir(parents=True, exist_ok=True)
        segment(model, job.input_path, files.mask, segment_options,
                probabilities=files.probabilities if options.probabilities else None, progress=progress,
                allowed_drivers=config.limits.allowed_drivers, max_pixels=config.limits.max_pixels)
        render_preview(files.mask, files.preview)
    except CanceledError:
        log.info("job %s canceled", job.id)
        files.remove()  # a canceled job keeps nothing, not even its upload
        return outcome("canceled", "canceled")
    except InterruptedJobError:
        log.info("job %s goes back to the queue: the worker is stopping", job.id)
        files.remove_results()
        store.release(job.id, job.token)
        return outcome("interrupted", "interrupted")
    except TilesegError as err:
        log.info("job %s failed: %s", job.id, err)
        return _fail(store, job, files, config, err.code, str(err), outcome)
    except Exception as err:  # one job's bug must not take the worker down: fail it with a reason
        log.exception("job %s failed unexpectedly", job.id)
        return _fail(store, job, files, config, "internal_error", f"unexpected error: {type(err).__name__}: {err}",
                     outcome)
    if not store.finish(job.id, job.token, JobStatus.SUCCEEDED, expires=time.time() + config.result_ttl):
        files.remove()  # canceled between the last batch and now
        return outcome("canceled", "canceled")
    _drop_input(job, files, config)
    log.info("job %s succeeded: %d tiles in %.1f s", job.id, done, time.perf_counter() - started)
    return outcome("succeeded")


def _fail(store: JobStore, job: Job, files: JobFiles, config: RunConfig, code: str, message: str,
          outcome: Callable[..., Outcome]) -> Outcome:
    files.remove_results()
    if not store.finish(job.id, job.token, JobStatus.FAILED, error=(code, message)):
        files.remove()
        return outcome("canceled", "canceled")
    _drop_input(job, files, config)
    return outcome("failed", code)


def _drop_input(job: Job, files: JobFiles, config: RunConfig) -> None:
    if job.input_owned and not config.keep_inputs:
        Path(job.input_path).unlink(missing_ok=True)


__all__ = ["ModelSource", "Outcome", "RunConfig", "run_job"]
