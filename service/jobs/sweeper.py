"""The sweeper: removes results past their time, and files that no job should still have.

Each sweep marks succeeded jobs whose ``expires`` has passed as ``expired`` and removes their files, then
looks at the jobs folder for what a crash may have left: the folders of canceled, expired or unknown jobs,
uploads of jobs that have ended, results that a worker committed in the table but died before renaming
into place (the renames are done now; see :mod:`tileseg.jobs`), and the working folders of attempts that
are over.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

from tileseg import objectstore
from tileseg.jobs.errors import JobNotFoundError
from tileseg.jobs.files import JobFiles, drop_input, jobs_root
from tileseg.jobs.objects import ObjectResults
from tileseg.jobs.periodic import Periodic
from tileseg.jobs.shards.files import remove_all as remove_shard_files
from tileseg.jobs.store import Job, JobStatus, JobStore
from tileseg.objectstore import ObjectStoreError

log = logging.getLogger(__name__)

# Seconds before a folder that no job accounts for (an upload whose request failed before its job was
# written), or an attempt's folder that is not the running attempt's, may be removed: younger, it may be a
# request still arriving, or a folder just made by a worker on another machine, carrying that machine's clock.
STALE_FOLDER = 3600.0


def sweep(
    store: JobStore,
    data_dir: Path,
    keep_inputs: bool = False,
    now: float | None = None,
    objects: ObjectResults | None = None,
) -> int:
    """One sweep; returns how many jobs expired in it. With results in S3 (``objects``), an expired job's
    objects are removed too."""
    expired = store.expire(now)
    for job in expired:
        JobFiles.of(data_dir, job.id).remove()
        if objects is not None:
            try:
                objects.remove(job.id)
            except ObjectStoreError:
                log.warning("job %s expired, but its objects could not be removed", job.id, exc_info=True)
                continue
        log.info("job %s expired; its files are removed", job.id)
    root = jobs_root(data_dir)
    if root.is_dir():
        for folder in root.iterdir():
            _tidy(store, folder, keep_inputs)
    if objects is not None:
        try:
            _tidy_objects(store, objects, keep_inputs)
        except ObjectStoreError:  # the store is away: the next sweep looks again
            log.warning("the sweep of the results' objects did not finish", exc_info=True)
    return len(expired)


def _tidy_objects(store: JobStore, objects: ObjectResults, keep_inputs: bool) -> None:
    """What the folder sweep does, for results in S3: the objects of canceled, expired, failed and unknown
    jobs go (an unknown job's once they are stale: a request may still be arriving), and of a succeeded job
    what is not its published results (its upload, shard files, stale attempts that lost)."""
    now = time.time()
    for job_id, found in objects.by_job().items():
        try:
            job: Job | None = store.get(str(uuid.UUID(job_id)))
        except (ValueError, JobNotFoundError):
            job = None
        stale = [item.url for item in found if now - item.modified > STALE_FOLDER]
        if job is None:
            doomed = stale if len(stale) == len(found) else []
        elif job.status in (JobStatus.CANCELED, JobStatus.EXPIRED, JobStatus.FAILED):
            doomed = [item.url for item in found]
        elif job.status is JobStatus.SUCCEEDED and job.published:
            keep = objects.attempt(job.id, job.published).key
            inputs = {objects.input(job.id).key} if not keep_inputs else set()
            doomed = [
                item.url
                for item in found
                if item.url.key in inputs
                or item.url.key.startswith(objects.shards(job.id).key)
                or (not item.url.key.startswith(keep) and item.url in stale and "/attempts/" in item.url.key)
            ]
        else:
            continue  # queued or running: its worker owns what it is writing
        if doomed:
            objectstore.delete_many(doomed)
            log.info("job %s: %d object(s) no longer needed were removed", job_id, len(doomed))


def _tidy(store: JobStore, folder: Path, keep_inputs: bool) -> None:
    try:
        job = store.get(str(uuid.UUID(folder.name)))
    except (ValueError, JobNotFoundError):
        # an upload whose request failed before its job was written, or something not ours
        if folder.is_dir() and time.time() - folder.stat().st_mtime > STALE_FOLDER:
            JobFiles(folder).remove()
        return
    if job.status in (JobStatus.CANCELED, JobStatus.EXPIRED):
        JobFiles(folder).remove()
        return
    if job.status.finished:
        drop_input(job, keep_inputs)  # a local upload (in S3, the job's run removed its own)
        remove_shard_files(JobFiles(folder))  # a sharded job failed by the reaper (a shard out of attempts)
    _tidy_attempts(job, JobFiles(folder))


def _tidy_attempts(job: Job, files: JobFiles) -> None:
    if not files.attempts.is_dir():
        return
    if job.status is JobStatus.SUCCEEDED and job.published and (files.attempts / job.published).is_dir():
        files.publish(job.published)  # its worker died between the commit and the renames
        log.info("job %s: the results of attempt %s were moved into place", job.id, job.published)
    running = job.token if job.status is JobStatus.RUNNING else None
    try:
        attempts = list(files.attempts.iterdir())
    except FileNotFoundError:  # the last attempt's folder was just removed, and the attempts folder with it
        return
    for attempt in attempts:
        try:
            old = time.time() - attempt.stat().st_mtime > STALE_FOLDER
        except FileNotFoundError:
            continue
        if attempt.name != running and old:
            try:
                files.remove_attempt(attempt.name)
            except ValueError:  # not an attempt's folder: not ours to remove
                pass


class Sweeper(Periodic):
    """Sweeps every ``interval`` seconds in a thread until stopped."""

    def __init__(
        self,
        store: JobStore,
        data_dir: Path,
        interval: float,
        keep_inputs: bool = False,
        objects: ObjectResults | None = None,
    ):
        super().__init__("tileseg-sweeper", interval)
        self.store = store
        self.data_dir = data_dir
        self.keep_inputs = keep_inputs
        self.objects = objects

    def step(self) -> None:
        """One sweep."""
        sweep(self.store, self.data_dir, self.keep_inputs, objects=self.objects)


__all__ = ["Sweeper", "sweep"]
