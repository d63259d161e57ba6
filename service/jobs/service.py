"""The jobs domain as the API uses it: submit, look up, cancel, fetch results; and the runtime that the
app starts in its lifespan and stops on shutdown.

Embedded mode (the default): model pools, a worker thread per device and the sweeper, in this process.
Queue mode: no network is loaded (the model cards suffice to check a request), a submitted job is sent to
the broker for the Celery workers (:mod:`tileseg.jobs.queue`), and the reaper and the sweeper run here.

Nothing here knows of HTTP: the routes call these methods and shape their answers; errors are the
product's own (:mod:`tileseg.errors`), which one handler maps to status codes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from tileseg import config, objectstore
from tileseg.engine.io.remote import RemoteUrl, configure_remote_reads
from tileseg.engine.runtime.device import configure_threads
from tileseg.jobs.errors import (
    JobCanceledError,
    JobFailedError,
    ResultGoneError,
    ResultNotFoundError,
    ResultNotReadyError,
)
from tileseg.jobs.files import RESULT_OPTIONS, JobFiles, drop_input, jobs_root
from tileseg.jobs.instances import check_objects, export_vectors
from tileseg.jobs.intake import JobOptions, check_input, check_shards, fetch_without_ranges, resolve_source
from tileseg.jobs.modelpool import CardCatalogue, ModelPool, ServedModels
from tileseg.jobs.runner import Outcome, RunConfig
from tileseg.jobs.store import ANY_OWNER, Job, JobStatus, JobStore, new_job_id
from tileseg.jobs.sweeper import Sweeper, sweep
from tileseg.jobs.worker import Worker
from tileseg.objectstore import S3Url
from tileseg.settings import Mode, Settings

log = logging.getLogger(__name__)

ResultRef: TypeAlias = Path | S3Url  # where a result lies: a file on this machine, or an object (TILESEG_RESULTS_URL)


@dataclass(frozen=True)
class Upload:
    """A file a client sent, already on the server's disk (at :attr:`JobFiles.upload`)."""

    path: Path
    filename: str  # the client's name for it: shown, never used as a path
    size: int


class JobService:
    """The job table, the models and the workers of one server.

    Args:
        settings: the service's settings.
        start_workers: run the runtime (embedded workers or, in queue mode, the reaper) and the sweeper.
        on_outcome: called with each run's :class:`~tileseg.jobs.runner.Outcome` by this process's
            workers (the API's metrics); queue workers are other processes and report nothing here.
    """

    def __init__(
        self, settings: Settings, start_workers: bool = True, on_outcome: Callable[[Outcome], None] | None = None
    ):
        self.settings = settings
        self.data_dir = settings.files_dir.resolve()
        jobs_root(self.data_dir).mkdir(parents=True, exist_ok=True)
        config.use(settings)  # the engine runs with the service's settings (cache, budget, threads, retries)
        configure_threads(settings.torch_threads)
        self.queue_mode = settings.mode is Mode.QUEUE
        self.pools: list[ModelPool] = []
        self.catalogue: ServedModels
        self.broker = None
        if self.queue_mode:
            from tileseg.jobs.broker import Broker  # Celery is imported only where it is used

            self.catalogue = CardCatalogue.of(settings)
            self.broker = Broker(settings)
        else:
            self.pools = [ModelPool.of(settings, device) for device in settings.devices]
            self.catalogue = self.pools[0]
        self.store = JobStore(settings.database)
        self.on_outcome = on_outcome
        self.run_config = RunConfig.of(settings)
        self.objects = self.run_config.objects  # uploads and results in S3, or None: on disk
        if self.objects is not None:
            configure_remote_reads()  # the viewer reads the results from the store by range requests
        self.limits = self.run_config.limits
        self.workers: list[Worker] = []
        self.sweeper: Sweeper | None = None
        self.reaper = None
        if start_workers:
            self._start_runtime()

    def _start_runtime(self) -> None:
        if self.queue_mode:
            # Many processes share this table: a running job may be running on a live worker elsewhere, so
            # only a lease that ran out says its worker died (the reaper's rule), never a restart of the API.
            from tileseg.jobs.reaper import Reaper

            self.reaper = Reaper(
                self.store,
                self.broker,
                lease=self.settings.lease,
                max_attempts=self.settings.max_attempts,
                requeue_after=self.settings.requeue_after,
                interval=self.settings.reap_interval,
            ).start()
            self.sweeper = self._sweeper()
            return
        # This process is the only worker of its table (embedded mode): whatever reads "running" was running
        # when the server stopped, so every such job goes back to the queue, or fails past its attempts.
        requeued, failed = self.store.recover(stale_before=float("inf"), max_attempts=self.settings.max_attempts)
        if requeued or failed:
            log.warning(
                "after a restart: %d job(s) queued again, %d failed after too many attempts", len(requeued), len(failed)
            )
        sweep(self.store, self.data_dir, self.settings.keep_inputs, objects=self.objects)
        for pool in self.pools:
            worker = Worker(self.store, pool.get, self.run_config, on_outcome=self.on_outcome)
            self.workers.append(worker.start())
        self.sweeper = self._sweeper()

    def _sweeper(self) -> Sweeper:
        interval, keep = self.settings.sweep_interval, self.settings.keep_inputs
        return Sweeper(self.store, self.data_dir, interval, keep, self.objects).start()

    def stop(self, grace: float | None = None) -> None:
        """Stop taking jobs; let running ones finish within ``grace`` seconds (default: the settings'), else
        put them back in the queue; then close everything."""
        grace = self.settings.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace
        for worker in self.workers:
            worker.stop(max(0.0, deadline - time.monotonic()))
        if self.reaper:
            self.reaper.stop()
        if self.sweeper:
            self.sweeper.stop()
        for pool in self.pools:
            pool.close()
        if self.broker:
            self.broker.close()
        self.store.close()
        config.use(None)

    # ---- what the routes call -------------------------------------------------------------------------------

    @property
    def models(self) -> ServedModels:
        """The served models: the first device's pool (every pool serves the same models), or in queue
        mode the cards."""
        return self.catalogue

    def new_job_files(self) -> tuple[str, JobFiles]:
        """A fresh job id and its (empty) folder, for an upload to be written to."""
        job_id = new_job_id()
        files = JobFiles.of(self.data_dir, job_id)
        files.root.mkdir(parents=True, exist_ok=False)
        return job_id, files

    def submit(
        self,
        job_id: str,
        model: str,
        options: JobOptions,
        owner: str | None,
        upload: Upload | None = None,
        source: str | None = None,
        callback: dict[str, str] | None = None,
    ) -> Job:
        """Check a request from headers and queue its job.

        Exactly one of ``upload`` (already written to the job's folder) and ``source`` (a path under an input
        root) is given; ``callback``: where its callbacks go (checked: :func:`tileseg.jobs.callbacks.job_callbacks`).
        On any error the upload is removed and no job exists.

        Raises:
            ModelNotFoundError, OptionsError, SourceNotAllowedError, and the input checks' errors (:func:`check_input`).
        """
        row = self.prepare(job_id, model, options, owner, upload, source)
        try:
            job = self.store.create(**row, callback=callback)
        except BaseException:
            self.discard(job_id, owned=row["input_owned"])
            raise
        self.dispatch(job.id)
        return job

    def prepare(
        self,
        job_id: str,
        model: str,
        options: JobOptions,
        owner: str | None,
        upload: Upload | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """The checks of :meth:`submit`, and the job's row for :meth:`JobStore.create` (not written yet: once
        it is, :meth:`dispatch` it; if it never is, :meth:`discard` it). On an error nothing of it is left."""
        files = JobFiles.of(self.data_dir, job_id)
        try:
            spec = self.models.spec(model, options.prune)
            check_objects(options, spec, self.models)  # instances=true of a model without: a 400, no job
            if upload is not None:
                path, name = upload.path, upload.filename
            else:
                path = resolve_source(source or "", self.settings.input_roots, self.settings.source_allow)
                name = path.name
                upload = self._fetched(path, files)  # a server without Range: fetched whole, then as an upload
                path = upload.path if upload is not None else path
            check_shards(options, spec, self.queue_mode)
            info = check_input(path, spec, options, self.limits, name=name)
            if self.objects is not None:  # no disk is shared with the workers: nothing of the job stays here
                if upload is not None:
                    path = self.objects.put_input(job_id, upload.path)
                files.remove()
        except BaseException:
            self.discard(job_id, owned=upload is not None)
            raise
        return dict(
            id=job_id,
            owner=owner,
            model=model,
            options=options.to_record(),
            input=info.to_dict(),
            input_path=path.url if isinstance(path, (RemoteUrl, objectstore.S3Url)) else str(path),
            input_owned=upload is not None,
        )

    def discard(self, job_id: str, owned: bool) -> None:
        """Remove what :meth:`prepare` kept of a job that is not written: its folder, its uploaded object."""
        JobFiles.of(self.data_dir, job_id).remove()
        if owned and self.objects is not None:
            self.objects.remove(job_id)

    def _fetched(self, path: Path | RemoteUrl, files: JobFiles) -> Upload | None:
        """The job's own copy of an http(s) ``source`` whose server ignores Range requests (up to the upload
        limit), kept and removed as an upload is; None for any other source."""
        if not isinstance(path, RemoteUrl):
            return None
        limit = min(self.settings.max_upload_bytes, self.settings.fetch_max_bytes)
        fetched = fetch_without_ranges(path, files.upload, limit, self.settings.source_allow)
        return None if fetched is None else Upload(fetched, path.name, fetched.stat().st_size)

    def dispatch(self, job_id: str) -> None:
        """Tell the workers of a job just written: wake the embedded ones, or send it to the broker."""
        if not self.queue_mode:
            for worker in self.workers:
                worker.wake()
            return
        if self.broker is None:  # queue mode makes one at start: a missing one is a bug, said plainly
            raise RuntimeError("queue mode without a broker")
        try:
            self.broker.send(job_id)
        except Exception:  # the job is in the table: the reaper sends it once the broker answers again
            log.warning(
                "job %s is queued, but the broker did not take its message; it is sent again later",
                job_id,
                exc_info=True,
            )
            return
        self.store.enqueued([job_id])

    def get(self, job_id: str, owner: Any = ANY_OWNER) -> Job:
        """The job (raises JobNotFoundError, also for another owner's)."""
        return self.store.get(job_id, owner)

    def list(self, owner: Any = ANY_OWNER, limit: int = 50, offset: int = 0) -> list[Job]:
        """The owner's jobs, newest first."""
        return self.store.list(owner, limit, offset)

    def cancel(self, job_id: str, owner: Any = ANY_OWNER) -> None:
        """Cancel a queued or running job, or give up a finished job's results; remove its files.

        A running job's worker stops at its next batch and removes what it wrote.
        """
        before = self.store.cancel(job_id, owner)
        if before.status is not JobStatus.RUNNING:
            JobFiles.of(self.data_dir, job_id).remove()
            drop_input(before, objects=self.objects)  # given up: not even an upload TILESEG_KEEP_INPUTS would keep
            if self.objects is not None:
                try:
                    self.objects.remove(before.id)
                except objectstore.ObjectStoreError:  # the job is canceled; the sweeper removes its objects
                    log.warning("job %s: its objects were not removed yet", before.id, exc_info=True)

    def count_by_status(self) -> dict[JobStatus, int]:
        """How many jobs are in each state (every state present, zero or not)."""
        return self.store.count_by_status()

    def result(self, job_id: str, kind: str, owner: Any = ANY_OWNER) -> tuple[Job, ResultRef]:
        """The job and where a result lies (``mask``, ``probabilities``, ``vectors``, ``instances``, ``objects``...):
        a path on this machine, or an object in S3 (TILESEG_RESULTS_URL).

        Raises:
            JobNotFoundError; ResultNotFoundError (probabilities not asked for); ResultNotReadyError
            (queued, running); JobFailedError; JobCanceledError, ResultGoneError (expired).
        """
        job = self.store.get(job_id, owner)
        if kind in RESULT_OPTIONS and not job.options.get(RESULT_OPTIONS[kind]):
            raise ResultNotFoundError(f"job {job.id} has no {kind}: submit it with {RESULT_OPTIONS[kind]}=true")
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            raise ResultNotReadyError(f"job {job.id} is {job.status.value}: its {kind} is not ready yet")
        if job.status is JobStatus.FAILED:
            raise JobFailedError(f"job {job.id} failed ({job.error_code}): it has no {kind}")
        if job.status is JobStatus.CANCELED:
            raise JobCanceledError(f"job {job.id} was canceled: it has no {kind}")
        gone = ResultGoneError(f"the results of job {job.id} have expired and were removed")
        if job.status is JobStatus.EXPIRED or not job.published:
            raise gone
        files = JobFiles.of(self.data_dir, job.id)
        path = getattr(files, kind)
        if self.objects is not None:
            url = self.objects.result(job, path.name)
            if not objectstore.exists(url):
                raise gone
            return job, url
        if not path.is_file():
            files.publish(job.published)  # committed in the table, not yet renamed (or its worker died between)
        if not path.is_file():
            raise gone
        return job, path

    def layer(self, job_id: str, layer: str, owner: Any = ANY_OWNER) -> tuple[Job, str]:
        """The job and the raster the viewer's ``layer`` is drawn from, as GDAL opens it (a path, or a
        ``/vsis3/`` object read by range requests): ``mask``, or ``input`` (the view copy of the input, made
        when the job succeeded).

        Raises:
            what :meth:`result` raises; ResultNotFoundError: the job has no view copy of its input.
        """
        job, mask = self.result(job_id, "mask", owner)
        if layer == "mask":
            return job, _gdal_path(mask)
        view: ResultRef = JobFiles.of(self.data_dir, job.id).view
        if self.objects is not None:
            view = self.objects.result(job, "view.tif")
        if not (objectstore.exists(view) if isinstance(view, S3Url) else view.is_file()):
            raise ResultNotFoundError(
                f"job {job.id} has no view copy of its input (TILESEG_VIEW_COPIES is off, or it could not be made)"
            )
        return job, _gdal_path(view)

    def vector_result(self, job_id: str, fmt: str, owner: Any = ANY_OWNER) -> tuple[Job, ResultRef]:
        """The job and its polygons in ``fmt`` (``gpkg`` as stored, ``geojson`` made from it once, then kept
        beside it).

        Raises:
            The errors of :meth:`result`; ResultNotFoundError when the job did not ask for vectors.
        """
        job, stored = self.result(job_id, "vectors", owner)
        if fmt == "gpkg":
            return job, stored
        converted = JobFiles.of(self.data_dir, job.id).vectors_as(f".{fmt}")
        if isinstance(stored, Path):
            if not converted.is_file():
                export_vectors(job, stored, converted)
            return job, converted
        url = S3Url(stored.bucket, stored.key.rsplit("/", 1)[0]).join(converted.name)  # beside the GeoPackage
        if not objectstore.exists(url):
            with tempfile.TemporaryDirectory(dir=self.data_dir) as scratch:
                local = objectstore.download(stored, Path(scratch) / stored.key.rsplit("/", 1)[-1])
                export_vectors(job, local, Path(scratch) / converted.name)
                objectstore.upload(Path(scratch) / converted.name, url, content_type="application/geo+json")
        return job, url

    # ---- health ---------------------------------------------------------------------------------------------

    def readiness(self) -> dict[str, bool]:
        """What ``/readyz`` checks: models loaded (queue mode: their cards read), the store writable, disk
        space, the results' bucket (when in S3) and the workers alive (queue mode: the broker answers)."""
        checks = {"models": bool(self.catalogue.names) and all(pool.names for pool in self.pools)}
        try:
            self.store.ping()
            checks["store"] = True
        except Exception:  # any database failure means: not ready
            log.exception("the job table is not writable")
            checks["store"] = False
        checks["disk"] = shutil.disk_usage(self.data_dir).free >= self.settings.min_free_bytes
        if self.objects is not None:
            checks["results"] = objectstore.reachable(self.objects.prefix)
        if self.queue_mode:
            checks["broker"] = self.broker is not None and self.broker.ping()
        else:
            checks["workers"] = all(w.alive for w in self.workers)
        return checks


def _gdal_path(ref: ResultRef) -> str:
    return ref.gdal_path if isinstance(ref, S3Url) else str(ref)


__all__ = ["JobService", "ResultRef", "Upload"]
