"""The deliverer: a thread of the server (never of a worker) that queues the callbacks jobs and batches have
due and posts what the outbox holds, retrying failures (:mod:`tileseg.jobs.callbacks` says how; the outbox,
:mod:`tileseg.jobs.outbox`, why nothing is lost across a restart).

The bodies are the API's: it hands in how a job and a batch are shown (``GET /jobs/{id}``, ``GET
/batches/{id}``), and the deliverer adds the delivery's id and event. A receiver that hangs holds this thread
for at most ``TILESEG_CALLBACK_TIMEOUT`` a delivery; no job waits for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from tileseg.jobs.batchstore import Batch
from tileseg.jobs.callbacks import DeliveryError, post, retry_wait
from tileseg.jobs.outbox import BATCH_FINISHED, Delivery, new_delivery
from tileseg.jobs.periodic import Periodic
from tileseg.jobs.store import Job, JobStore
from tileseg.settings import Settings

log = logging.getLogger(__name__)

ShowJob = Callable[[Job], dict[str, Any]]
ShowBatch = Callable[[Batch], dict[str, Any]]
BATCH_SIZE = 20  # deliveries claimed at a time


def body(shown: dict[str, Any], delivery_id: str, event: str) -> str:
    """A delivery's exact body: what the API shows, with the delivery's id and event."""
    return json.dumps({**shown, "delivery": delivery_id, "event": event}, separators=(",", ":"))


class Deliverer(Periodic):
    """Every ``TILESEG_CALLBACK_INTERVAL`` seconds: queue the callbacks due, then post the deliveries due.

    Args:
        store: the job table (its outbox).
        settings: the callback settings (allow-list, secret, timeout, how long to retry).
        show_job: a job as ``GET /jobs/{id}`` shows it.
        show_batch: a batch as ``GET /batches/{id}`` shows it.
    """

    def __init__(self, store: JobStore, settings: Settings, show_job: ShowJob, show_batch: ShowBatch):
        super().__init__("tileseg-callbacks", settings.callback_interval, at_start=True)
        self.store = store
        self.settings = settings
        self.show_job = show_job
        self.show_batch = show_batch

    def step(self) -> bool:
        self.queue_due()
        sent = self.send_due()
        return sent >= BATCH_SIZE  # more may be waiting: the next round at once

    def queue_due(self) -> int:
        """Queue the deliveries of jobs whose status has callbacks not yet queued, and of batches just finished."""
        queued = 0
        for job in self.store.unnotified_jobs():
            url = (job.callback or {}).get(job.status.value)
            fresh = []
            if url:
                delivery = new_delivery(url, job.status.value, "")
                try:
                    delivery["body"] = body(self.show_job(job), delivery["id"], job.status.value)
                except Exception:  # a job the API cannot show is a bug: said, and the other jobs go on
                    log.exception("job %s: its %s callback cannot be made", job.id, job.status.value)
                    continue
                fresh.append(delivery)
            if self.store.queue_job_deliveries(job, fresh):
                queued += len(fresh)
        for batch in self.store.finished_batches():
            delivery = new_delivery(batch.callback or "", BATCH_FINISHED, "")
            delivery["body"] = body(self.show_batch(batch), delivery["id"], BATCH_FINISHED)
            queued += self.store.queue_batch_delivery(batch, delivery)
        return queued

    def send_due(self) -> int:
        """Post the deliveries due; returns how many were tried."""
        hold = 2 * self.settings.callback_timeout + 5  # past it, a sender that died lets another take it
        due = self.store.due_deliveries(hold, BATCH_SIZE)
        for delivery in due:
            self._attempt(delivery)
        return len(due)

    def _attempt(self, delivery: Delivery) -> None:
        secret = self.settings.callback_secret.get_secret_value() if self.settings.callback_secret else ""
        try:
            post(
                delivery.url,
                delivery.body.encode(),
                delivery.id,
                delivery.event,
                secret,
                self.settings.callback_timeout,
                list(self.settings.callback_allow),
            )
        except DeliveryError as err:
            attempts = delivery.attempts + 1
            wait = retry_wait(attempts)
            now = delivery.read_at or delivery.created
            give_up = now + wait > delivery.created + self.settings.callback_retry_for
            log.warning(
                "callback %s (%s of %s): attempt %d failed: %s%s",
                delivery.id,
                delivery.event,
                delivery.job_id or f"batch {delivery.batch_id}",
                attempts,
                err,
                "; given up (TILESEG_CALLBACK_RETRY_FOR)" if give_up else f"; again in {wait:g} s",
            )
            self.store.delivery_failed(delivery.id, str(err)[:1000], None if give_up else wait)
            return
        self.store.delivered(delivery.id)
        log.info("callback %s (%s) delivered", delivery.id, delivery.event)


__all__ = ["Deliverer", "body"]
