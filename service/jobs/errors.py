"""The errors of jobs and their results: an unknown job, a result not made (yet, or ever), gone or canceled,
a source path outside the allowed folders, and the two signals that stop an attempt through its progress
callback. Each derives from the root :class:`tileseg.errors.TilesegError` and the builtin it resembles; the
HTTP layer maps them to status codes by their ``code``.
"""

from __future__ import annotations

from tileseg.engine.errors import InputError, OptionsError, TooLargeError
from tileseg.errors import TilesegError


class SourceNotAllowedError(InputError, PermissionError):
    """A ``source`` path that is not a file under one of the allowed input roots."""

    code = "source_not_allowed"


class JobNotFoundError(TilesegError, LookupError):
    """No job with this id (or none that the caller's key may see)."""

    code = "job_not_found"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ResultNotReadyError(TilesegError, RuntimeError):
    """The job has no result yet (queued, running), or will have none (failed)."""

    code = "not_ready"


class ResultNotFoundError(TilesegError, LookupError):
    """The job exists but never makes this result (probabilities that were not asked for)."""

    code = "no_such_result"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class JobFailedError(ResultNotReadyError):
    """The job failed: it has no result, and the job's ``error`` says why."""

    code = "job_failed"


class ResultGoneError(TilesegError, FileNotFoundError):
    """The job's results expired (``TILESEG_RESULT_TTL``) or were deleted: their files are gone."""

    code = "expired"


class JobCanceledError(ResultGoneError):
    """The job was canceled: it has no result, and its files are gone."""

    code = "canceled"


class InterruptedJobError(TilesegError):
    """The worker is stopping: the job goes back to the queue (raised through the progress callback)."""

    code = "interrupted"


class LeaseLostError(TilesegError):
    """The attempt no longer holds its job: its lease ran out and the job went to another attempt. It
    stops, touches nothing of the job's, and publishes nothing (raised through the progress callback)."""

    code = "lease_lost"


class ShardsNeedQueueError(TilesegError, ValueError):
    """``shards`` > 1 asked of a server that runs its jobs itself (``TILESEG_MODE=embedded``): shards are run by
    queue workers."""

    code = "shards_need_queue"


class NoInstanceOutputError(OptionsError):
    """``instances=true`` asked of a model whose card declares no instance decoding: refused before the job
    exists, naming the served models that have one."""

    code = "no_instance_output"


class ShardStoppedError(TilesegError):
    """A shard's job ended without it (another shard failed it): the shard stops and keeps nothing."""

    code = "shard_stopped"


class CallbackNotAllowedError(TilesegError, PermissionError):
    """A callback URL (``callback``, an OGC ``subscriber``'s) that is not under a prefix of
    ``TILESEG_CALLBACK_ALLOW``, or that the server cannot sign (no ``TILESEG_CALLBACK_SECRET``)."""

    code = "callback_not_allowed"


class BatchNotFoundError(JobNotFoundError):
    """No batch with this id (or none that the caller's key may see)."""

    code = "batch_not_found"


class BatchTooLargeError(TooLargeError):
    """A batch of more sources than a key may have jobs waiting or running (``TILESEG_BATCH_MAX_JOBS``): it is
    refused whole, and would be however long the caller waited."""

    code = "batch_too_large"


class TooManyJobsError(TilesegError, RuntimeError):
    """The caller's key would have more jobs waiting or running than ``TILESEG_BATCH_MAX_JOBS`` with this batch:
    try again once some have finished."""

    code = "too_many_jobs"


__all__ = [
    "BatchNotFoundError",
    "BatchTooLargeError",
    "CallbackNotAllowedError",
    "TooManyJobsError",
    "ShardStoppedError",
    "ShardsNeedQueueError",
    "InterruptedJobError",
    "JobCanceledError",
    "JobFailedError",
    "JobNotFoundError",
    "LeaseLostError",
    "NoInstanceOutputError",
    "ResultGoneError",
    "ResultNotFoundError",
    "ResultNotReadyError",
    "SourceNotAllowedError",
]
