"""Scale-out: jobs run by Celery workers on a broker (Redis), any number of them, on any number of machines.

The broker carries nothing but job ids. A worker that receives one claims the job in the table and runs it
through the same job function as the embedded server (:func:`tileseg.jobs.runner.run_job`); if someone
else has the job, or it was canceled, the message is a no-op. A :class:`~tileseg.jobs.reaper.Reaper`
runs in every worker. How the table, not the broker, keeps every job: :mod:`tileseg.jobs`.

A worker is one process that runs one job at a time (Celery's ``solo`` pool: the job runs in the process
that holds the broker connection and the models; one process per GPU), takes one message at a time
(prefetch 1) and acknowledges it when the job has ended (late acks). SIGTERM makes it take no more jobs
and gives the running one ``TILESEG_SHUTDOWN_GRACE`` seconds; past that the job goes back to the queue
(its message is handed back too) and the worker exits.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from celery import signals
from celery.exceptions import Reject

from tileseg import config
from tileseg.engine.errors import OptionsError
from tileseg.engine.runtime.device import configure_threads
from tileseg.jobs.broker import SHARD_TASK, TASK, Broker, make_celery
from tileseg.jobs.modelpool import ModelPool
from tileseg.jobs.reaper import Reaper
from tileseg.jobs.runner import Outcome, RunConfig, RunStatus, run_job
from tileseg.jobs.shards.run import ShardCount, assemble_job, plan_job, run_shard_job, shard_count
from tileseg.jobs.shards.store import ShardStore
from tileseg.jobs.store import Job, JobStore
from tileseg.settings import Settings

log = logging.getLogger(__name__)


def worker_device(settings: Settings) -> str:
    """The one device a queue worker runs on (``TILESEG_DEVICE``).

    Raises:
        OptionsError: the settings name more than one device.
    """
    devices = settings.devices
    if len(devices) > 1:
        raise OptionsError(
            f"a worker runs on one device; TILESEG_DEVICE={settings.device} names "
            f"{len(devices)}: start one worker per device"
        )
    return devices[0]


class QueueWorker:
    """What one ``tileseg worker`` process holds: the models on its device, the job table, the broker, the
    reaper; and the task's body.

    Args:
        settings: the service's settings (``TILESEG_DEVICE`` names this worker's one device).

    Raises:
        OptionsError: the settings name more than one device (:func:`worker_device`).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        device = worker_device(settings)
        config.use(settings)  # the engine runs with the service's settings (cache, budget, threads, retries)
        configure_threads(settings.torch_threads)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.store = JobStore(settings.database)
        self.shards = ShardStore(self.store)
        self.pool = ModelPool.of(settings, device)
        self.config = RunConfig.of(settings)
        self.broker = Broker(settings)
        self.reaper = Reaper(
            self.store,
            self.broker,
            lease=settings.lease,
            max_attempts=settings.max_attempts,
            requeue_after=settings.requeue_after,
            interval=settings.reap_interval,
        )
        self._stopping_since: float | None = None

    def run(self, job_id: str) -> str:
        """The task: claim the job, run it, say how it ended.

        Raises:
            Reject: the worker is stopping; the message goes back to the broker for another worker.
        """
        if self._stopping_since is not None:
            raise Reject("the worker is stopping", requeue=True)
        job = self.store.claim(self.name, job_id)
        if job is None:  # another message's worker has it, or it was canceled or is done: nothing to do
            log.info("job %s: nothing to claim (it is no longer queued)", job_id)
            return "skipped"
        log.info("job %s: attempt %s (start %d) on %s", job.id, job.token, job.attempts, self.pool.device)
        outcome = self._run_claimed(job)
        if outcome.status is RunStatus.INTERRUPTED:
            raise Reject("the worker stopped: the job is queued again", requeue=True)
        return outcome.status.value

    def _run_claimed(self, job: Job) -> Outcome:
        """Run a claimed job whole; or plan it in shards and send them; or, sharded already and every shard
        done (its assembler died), assemble it."""
        stores = (self.store, self.shards)
        if job.plan is not None:
            return assemble_job(stores, job, self.pool.get, self.config, self._past_grace)
        try:
            count = shard_count(
                job, self.pool.get(job.model, job.options.get("prune")).spec, self.settings.shard_pixels
            )
        except Exception:  # a model that cannot load: the job's run fails it with the reason
            count = ShardCount(1, automatic=True)
        if count.count > 1:
            planned = plan_job(stores, job, self.pool.get, self.config, self._past_grace, count, self._send_shards)
            if planned is not None:
                return planned
        return run_job(self.store, job, self.pool.get, self.config, self._past_grace)

    def run_shard(self, job_id: str, number: int) -> str:
        """The shard task: claim the shard, run it (the last one assembles its job), say how it ended.

        Raises:
            Reject: the worker is stopping; the message goes back to the broker for another worker.
        """
        if self._stopping_since is not None:
            raise Reject("the worker is stopping", requeue=True)
        shard = self.shards.claim(self.name, job_id, number)
        if shard is None:  # taken, done, or its job ended: nothing to do
            log.info("job %s shard %d: nothing to claim", job_id, number + 1)
            return "skipped"
        log.info("job %s shard %d: attempt %s (start %d)", job_id, number + 1, shard.token, shard.attempts)
        stores = (self.store, self.shards)
        outcome = run_shard_job(stores, shard, self.pool.get, self.config, self._past_grace, self.name)
        if outcome.status is RunStatus.INTERRUPTED:
            raise Reject("the worker stopped: the shard is queued again", requeue=True)
        return outcome.status.value

    def _send_shards(self, job_id: str, numbers: list[int]) -> None:
        sent = []
        for number in numbers:
            try:
                self.broker.send_shard(job_id, number)
            except Exception:  # the shards are in the table: the reaper sends them once the broker answers
                log.warning("job %s: shard %d is queued, but the broker did not take its message", job_id, number + 1)
                break
            sent.append((job_id, number))
        self.shards.enqueued(sent)

    def stopping(self) -> None:
        """SIGTERM arrived: take no new job; the running one has the grace period from now."""
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()
            log.info("worker %s stopping: a running job has %g s to finish", self.name, self.settings.shutdown_grace)

    def _past_grace(self) -> bool:
        since = self._stopping_since
        return since is not None and time.monotonic() - since > self.settings.shutdown_grace

    def close(self) -> None:
        """Stop the reaper; release the models, the broker and the job table."""
        self.reaper.stop()
        self.pool.close()
        self.broker.close()
        self.store.close()
        config.use(None)


def run_worker(settings: Settings, log_level: str = "info") -> int:
    """Run a Celery worker process for the settings until it is stopped; returns its exit status."""
    worker = QueueWorker(settings)
    app = make_celery(settings)

    def segment_job(job_id: str) -> str:
        """Segment the job ``job_id`` of the job table (the message carries nothing else)."""
        return worker.run(job_id)

    def segment_shard(job_id: str, number: int) -> str:
        """Segment shard ``number`` of the sharded job ``job_id``."""
        return worker.run_shard(job_id, int(number))

    app.task(name=TASK, acks_late=True, reject_on_worker_lost=True)(segment_job)
    app.task(name=SHARD_TASK, acks_late=True, reject_on_worker_lost=True)(segment_shard)
    signals.worker_shutting_down.connect(lambda **_: worker.stopping(), weak=False)
    worker.reaper.start()
    try:
        return (
            app.start(
                argv=[
                    "worker",
                    "--pool=solo",
                    "--concurrency=1",
                    "--prefetch-multiplier=1",
                    f"--queues={settings.queue_name}",
                    f"--hostname=tileseg-{os.getpid()}@{socket.gethostname()}",
                    f"--loglevel={log_level.upper()}",
                    # no gossip, mingle or event heartbeats: workers share nothing but the queue and the job table
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ]
            )
            or 0
        )
    finally:
        worker.close()


__all__ = ["QueueWorker", "run_worker", "worker_device"]
