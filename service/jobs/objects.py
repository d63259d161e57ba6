"""Jobs whose uploads and results live in object storage (``TILESEG_RESULTS_URL=s3://bucket/prefix/``).

Then the API and the workers share no disk: the API puts an upload at ``<prefix>jobs/<id>/input`` once its
checks pass; a worker fetches it into its own scratch folder (a whole file the client sent anyway; every
format, slides included, reads as it does from disk), runs the job there and, *before* it commits the success
in the job table, puts its results under ``<prefix>jobs/<id>/attempts/<token>/``. The table's commit names
that attempt the published one, and results are served from the published attempt's keys: nothing is
renamed after the commit, so a worker that dies at any point loses nothing, and an attempt that lost its
job publishes nothing (its keys are removed with the job's). Expiry and cancellation remove every object
under ``<prefix>jobs/<id>/``. Local results (the default) keep their folder and renames
(:mod:`tileseg.jobs.files`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tileseg import objectstore
from tileseg.jobs.store import Job
from tileseg.objectstore import S3Url

log = logging.getLogger(__name__)

# what a finished attempt puts in the store (whichever it made), with the types the routes serve them with
RESULT_TYPES = {
    "mask.tif": "image/tiff",
    "probabilities.tif": "image/tiff",
    "vectors.gpkg": "application/geopackage+sqlite3",
    "instances.tif": "image/tiff",
    "objects.csv": "text/csv",
    "preview.png": "image/png",
    "view.tif": "image/tiff",
}


class ObjectResults:
    """The jobs' files under an ``s3://bucket/prefix/``.

    Args:
        url: the prefix (``TILESEG_RESULTS_URL``).
    """

    def __init__(self, url: str):
        self.prefix = S3Url.parse(url)

    def job(self, job_id: str) -> S3Url:
        """The folder of one job's objects (a key ending in ``/``)."""
        return S3Url(self.prefix.bucket, self.prefix.join("jobs", str(job_id)).key + "/")

    def input(self, job_id: str) -> S3Url:
        """Where a job's upload is kept until the job ends."""
        return self.prefix.join("jobs", str(job_id), "input")

    def attempt(self, job_id: str, token: str) -> S3Url:
        """The folder of one attempt's results."""
        return S3Url(self.prefix.bucket, self.prefix.join("jobs", str(job_id), "attempts", token).key + "/")

    def shards(self, job_id: str) -> S3Url:
        """The folder of a sharded job's shard files."""
        return S3Url(self.prefix.bucket, self.prefix.join("jobs", str(job_id), "shards").key + "/")

    def shard_attempt(self, job_id: str, folder: str) -> S3Url:
        """The folder of one shard attempt's files (``folder``: ``<number>-<token>``, as on disk)."""
        return S3Url(self.prefix.bucket, self.shards(job_id).join(folder).key + "/")

    def put_folder(self, folder: Path, url: S3Url) -> list[S3Url]:
        """Put every file of ``folder`` under ``url`` (a folder's key), by name."""
        put = []
        for path in sorted(folder.iterdir()):
            if path.is_file():
                objectstore.upload(path, url.join(path.name))
                put.append(url.join(path.name))
        return put

    def result(self, job: Job, name: str) -> S3Url:
        """The object of the published attempt's result ``name`` (``mask.tif``...)."""
        if not job.published:
            raise ValueError(f"job {job.id} has no published attempt")
        return self.attempt(job.id, job.published).join(name)

    def put_input(self, job_id: str, path: Path) -> S3Url:
        """Put an upload in the store, then remove it from this machine's disk."""
        url = self.input(job_id)
        objectstore.upload(path, url)
        path.unlink(missing_ok=True)
        return url

    def stage(self, job_id: str, token: str, folder: Path) -> list[S3Url]:
        """Put what the attempt ``token`` made in ``folder`` under its own keys (before the table's commit)."""
        put = []
        for name, media_type in RESULT_TYPES.items():
            path = folder / name
            if path.is_file():
                url = self.attempt(job_id, token).join(name)
                objectstore.upload(path, url, content_type=media_type)
                put.append(url)
        return put

    def remove_attempt(self, job_id: str, token: str) -> None:
        """Remove an attempt's objects (one that did not publish)."""
        try:
            objectstore.delete_prefix(self.attempt(job_id, token))
        except objectstore.ObjectStoreError:  # the sweeper's expiry removes them with the job's
            log.warning("job %s: the objects of attempt %s were not removed", job_id, token, exc_info=True)

    def remove(self, job_id: str) -> int:
        """Remove every object of the job; returns how many."""
        return objectstore.delete_prefix(self.job(job_id))

    def by_job(self) -> dict[str, list[objectstore.Listed]]:
        """Every object under ``<prefix>jobs/``, by the job id its key names (for the sweeper)."""
        root = self.prefix.join("jobs").key + "/"
        found: dict[str, list[objectstore.Listed]] = {}
        for item in objectstore.listing(S3Url(self.prefix.bucket, root)):
            job_id = item.url.key[len(root) :].split("/", 1)[0]
            found.setdefault(job_id, []).append(item)
        return found

    def is_own_input(self, job: Job) -> bool:
        """Whether the job's input is an upload kept in this store."""
        return job.input_owned and job.input_path == self.input(job.id).url


__all__ = ["RESULT_TYPES", "ObjectResults"]
