"""The broker as the job table's side sees it (queue mode): send a job's id (or a shard's), tell which ids
wait, ping.

The broker carries nothing but job ids; why it may lose, repeat or hold back messages without a job being
lost or run twice: :mod:`tileseg.jobs`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable

from celery import Celery

from tileseg.settings import Settings

log = logging.getLogger(__name__)

TASK = "tileseg.segment"
SHARD_TASK = "tileseg.shard"  # one shard of a sharded job: (job id, shard number)
SEND_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}


def make_celery(settings: Settings) -> Celery:
    """A Celery app on the settings' broker, configured for long jobs that the job table guards."""
    app = Celery("tileseg", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results are files and rows in the job table, not broker messages
        # acknowledged when the job has ended, so a message whose worker vanished stays with the broker
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a busy worker holds no second message that an idle one could run
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker that restarts is waited for, not given up on
    )
    return app


class Broker:
    """The broker as the job table's side sees it: send a job's id, tell which ids wait, answer a ping.

    Args:
        settings: ``broker_url`` and ``queue_name`` are used.
    """

    def __init__(self, settings: Settings):
        self.url = settings.broker_url or ""
        self.queue = settings.queue_name
        self.app = make_celery(settings)
        self._redis = None
        self._lock = threading.Lock()

    def send(self, job_id: str) -> None:
        """Queue a message that names the job (the message's task id is the job id, for the logs).

        Raises:
            kombu's OperationalError: the broker cannot be reached (after a few quick retries).
        """
        self.app.send_task(
            TASK, args=[str(job_id)], task_id=str(job_id), queue=self.queue, retry=True, retry_policy=SEND_RETRY
        )

    def send_shard(self, job_id: str, number: int) -> None:
        """Queue a message that names one shard of a sharded job (its task id ``<job id>:<number>``).

        Raises:
            kombu's OperationalError: as :meth:`send`.
        """
        self.app.send_task(
            SHARD_TASK,
            args=[str(job_id), int(number)],
            task_id=f"{job_id}:{int(number)}",
            queue=self.queue,
            retry=True,
            retry_policy=SEND_RETRY,
        )

    def ping(self) -> bool:
        """Whether the broker answers now."""
        try:
            if self._is_redis:
                return bool(self._client().ping())
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
            return True
        except Exception:  # any failure to reach it means: not ready
            log.warning("the broker at %s does not answer", _safe_url(self.url), exc_info=True)
            return False

    def missing(self, job_ids: list[str], queued_total: int) -> list[str]:
        """Which of these queued jobs have no message waiting in the broker's queue.

        ``queued_total`` is how many jobs the table holds queued: when the queue holds at least as many
        messages, none is taken to be missing (the common case, answered from the queue's length alone).
        Where the broker's queue cannot be read (not Redis), every job given is taken to be missing: a
        message sent twice only costs the worker that draws it a look at the table.
        """
        if not self._is_redis:
            return list(job_ids)
        client = self._client()
        length = client.llen(self.queue)
        if length >= queued_total:
            return []
        waiting: set[str] = set()
        for start in range(0, length, 1000):
            waiting.update(_task_ids(client.lrange(self.queue, start, start + 999)))
        return [job_id for job_id in job_ids if job_id not in waiting]

    def close(self) -> None:
        """Close the connections to the broker."""
        if self._redis is not None:
            self._redis.close()
        self.app.close()

    @property
    def _is_redis(self) -> bool:
        return self.url.startswith(("redis://", "rediss://"))

    def _client(self):
        import redis

        with self._lock:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5)
            return self._redis


def _task_ids(raw: Iterable[bytes]) -> set[str]:
    """The task ids of messages as kombu's Redis transport stores them (JSON with the protocol's headers)."""
    ids = set()
    for item in raw:
        try:
            ids.add(str(json.loads(item)["headers"]["id"]))
        except (ValueError, KeyError, TypeError):  # a message of another shape: not one of ours
            continue
    return ids


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


__all__ = ["Broker", "SEND_RETRY", "SHARD_TASK", "TASK", "make_celery"]
