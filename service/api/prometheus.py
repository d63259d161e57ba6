"""Prometheus metrics of the service, in a registry of their own (one per app, so tests can build many).

* ``tileseg_jobs{state}``: jobs in the table by state, and ``tileseg_queue_depth``: jobs waiting; both are
  read from the job table when scraped, so they are right whichever process changed the jobs.
* ``tileseg_job_seconds{outcome}``: how long runs took; ``tileseg_tiles_total``: tiles run;
  ``tileseg_tiles_per_second``: the throughput of the last finished job. The embedded workers report each
  run through the callback that the app hands the jobs (:meth:`ServiceMetrics.job_finished`).
* ``tileseg_http_responses_total{code}``: responses by status code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from tileseg.jobs.runner import Outcome, RunStatus
from tileseg.jobs.store import JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

JobCounts = Callable[[], dict[JobStatus, int]]  # how many jobs are in each state, read when called


class _JobTable:
    """Collects job counts from the table at scrape time."""

    def __init__(self, counts: JobCounts):
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        states = GaugeMetricFamily("tileseg_jobs", "Jobs in the job table by state.", labels=["state"])
        for status, n in counts.items():
            states.add_metric([status.value], n)
        yield states
        yield GaugeMetricFamily(
            "tileseg_queue_depth", "Jobs queued and not yet running.", value=counts[JobStatus.QUEUED]
        )


class ServiceMetrics:
    """The service's instruments and their registry.

    The job table's counts join them once the jobs exist (:meth:`watch`): the jobs take
    :meth:`job_finished` as they are made, so the metrics come first.
    """

    def __init__(self):
        self.registry = CollectorRegistry()
        self.job_seconds = Histogram(
            "tileseg_job_seconds",
            "Seconds a job's run took, by outcome.",
            ["outcome"],
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf")),
            registry=self.registry,
        )
        self.tiles = Counter("tileseg_tiles", "Tiles run by the workers.", registry=self.registry)
        self.tiles_per_second = Gauge(
            "tileseg_tiles_per_second", "Tiles per second of the last finished job.", registry=self.registry
        )
        self.responses = Counter(
            "tileseg_http_responses", "HTTP responses by status code.", ["code"], registry=self.registry
        )

    def watch(self, counts: JobCounts) -> None:
        """Report the jobs by state, as ``counts()`` reads them at each scrape."""
        self.registry.register(_JobTable(counts))

    def job_finished(self, outcome: Outcome) -> None:
        """Record a run (a worker calls it after each job)."""
        self.job_seconds.labels(outcome.status.value).observe(outcome.seconds)
        self.tiles.inc(outcome.tiles)
        if outcome.status is RunStatus.SUCCEEDED and outcome.seconds > 0:
            self.tiles_per_second.set(outcome.tiles / outcome.seconds)

    def response(self, status_code: int) -> None:
        """Count an HTTP response."""
        self.responses.labels(str(status_code)).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "ServiceMetrics"]
