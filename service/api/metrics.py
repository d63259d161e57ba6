"""Prometheus metrics of the service, in a registry of their own (one per app, so tests can build many).

* ``tileseg_jobs{state}``: jobs in the table by state, and ``tileseg_queue_depth``: jobs waiting; both are
  read from the job table when scraped, so they are right whichever process changed the jobs.
* ``tileseg_job_seconds{outcome}``: how long runs took; ``tileseg_tiles_total``: tiles run;
  ``tileseg_tiles_per_second``: the throughput of the last finished job.
* ``tileseg_http_responses_total{code}``: responses by status code.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from tileseg.jobs.runner import Outcome
from tileseg.jobs.store import JobStatus, JobStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _JobTable:
    """Collects job counts from the table at scrape time."""

    def __init__(self, store: JobStore):
        self.store = store

    def collect(self):
        counts = self.store.count_by_status()
        states = GaugeMetricFamily("tileseg_jobs", "Jobs in the job table by state.", labels=["state"])
        for status, n in counts.items():
            states.add_metric([status.value], n)
        yield states
        yield GaugeMetricFamily("tileseg_queue_depth", "Jobs queued and not yet running.",
                                value=counts[JobStatus.QUEUED])


class ServiceMetrics:
    """The service's instruments and their registry."""

    def __init__(self, store: JobStore):
        self.registry = CollectorRegistry()
        self.registry.register(_JobTable(store))
        self.job_seconds = Histogram("tileseg_job_seconds", "Seconds a job's run took, by outcome.", ["outcome"],
                                     buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf")),
                                     registry=self.registry)
        self.tiles = Counter("tileseg_tiles", "Tiles run by the workers.", registry=self.registry)
        self.tiles_per_second = Gauge("tileseg_tiles_per_second", "Tiles per second of the last finished job.",
                                      registry=self.registry)
        self.responses = Counter("tileseg_http_responses", "HTTP responses by status code.", ["code"],
                                 registry=self.registry)

    def job_finished(self, outcome: Outcome) -> None:
        """Record a run (the worker calls it after each job)."""
        self.job_seconds.labels(outcome.status).observe(outcome.seconds)
        self.tiles.inc(outcome.tiles)
        if outcome.status == "succeeded" and outcome.seconds > 0:
            self.tiles_per_second.set(outcome.tiles / outcome.seconds)

    def response(self, status_code: int) -> None:
        self.responses.labels(str(status_code)).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "ServiceMetrics"]
