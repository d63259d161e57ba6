"""Where a job's files lie: ``DATA_DIR/jobs/<id>/``, named by the server, never by a client.

A job id is a UUID the server made; it is checked again here, so that no string can lead out of the
jobs folder.

Each attempt at a job writes its results into ``attempts/<token>/``; once the job table has published
the attempt, its files are renamed into the job's folder (:meth:`JobFiles.publish`, which anyone may
redo). Why: :mod:`tileseg.jobs`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tileseg import objectstore
from tileseg.jobs.store import Job

if TYPE_CHECKING:
    from tileseg.jobs.objects import ObjectResults

log = logging.getLogger(__name__)


# the results a job makes only when asked, with the option that asks for them
RESULT_OPTIONS = {
    "probabilities": "probabilities",
    "vectors": "vectors",
    "instances": "instances",
    "objects": "instances",
}


@dataclass(frozen=True)
class JobFiles:
    """The files of one job."""

    root: Path

    @classmethod
    def of(cls, data_dir: str | Path, job_id: str) -> JobFiles:
        """The files of ``job_id`` under ``data_dir``.

        Raises:
            ValueError: the id is not a UUID.
        """
        return cls(Path(data_dir) / "jobs" / str(uuid.UUID(str(job_id))))

    @property
    def upload(self) -> Path:
        return self.root / "input"

    @property
    def mask(self) -> Path:
        return self.root / "mask.tif"

    @property
    def probabilities(self) -> Path:
        return self.root / "probabilities.tif"

    @property
    def vectors(self) -> Path:
        """The polygons, as the run wrote them (a GeoPackage); other formats are made from it on request."""
        return self.root / "vectors.gpkg"

    @property
    def instances(self) -> Path:
        """The objects' uint32 label GeoTIFF (``instances=true``)."""
        return self.root / "instances.tif"

    @property
    def objects(self) -> Path:
        """The objects' table, one row per object (``instances=true``)."""
        return self.root / "objects.csv"

    def vectors_as(self, suffix: str) -> Path:
        """Where the polygons converted to ``suffix`` (``.geojson``) are kept once made."""
        return self.root / f"vectors{suffix}"

    @property
    def preview(self) -> Path:
        return self.root / "preview.png"

    @property
    def view(self) -> Path:
        """The view copy of the input: the viewer's base layer (:func:`tileseg.engine.views.render.write_view`)."""
        return self.root / "view.tif"

    @property
    def attempts(self) -> Path:
        """The folder of the attempts' own files."""
        return self.root / "attempts"

    def attempt(self, token: str) -> JobFiles:
        """Where the attempt ``token`` writes its results before they are published.

        Raises:
            ValueError: the token is not one the job table makes (hex).
        """
        if not re.fullmatch(r"[0-9a-f]{8,64}", str(token)):
            raise ValueError(f"not an attempt token: {token!r}")
        return JobFiles(self.attempts / token)

    def publish(self, token: str) -> bool:
        """Move the results of attempt ``token`` into place, one atomic rename each, then drop its folder.

        Idempotent: what was moved already is not looked for again. Returns True when the mask is in place.
        """
        attempt = self.attempt(token)
        # the mask last: whoever sees it in place finds the preview and probabilities there too
        results = (self.probabilities, self.vectors, self.instances, self.objects, self.preview, self.view, self.mask)
        for name in (path.name for path in results):
            try:
                os.replace(attempt.root / name, self.root / name)
            except FileNotFoundError:  # not asked for, or moved already (by the worker, or by a roll-forward)
                pass
        self.remove_attempt(token)
        return self.mask.is_file()

    def remove_attempt(self, token: str) -> None:
        """Remove what the attempt ``token`` wrote in its own folder (and the attempts folder once empty)."""
        shutil.rmtree(self.attempt(token).root, ignore_errors=True)
        try:
            self.attempts.rmdir()
        except OSError:  # not empty (another attempt's), or gone already
            pass

    def remove(self) -> None:
        """Remove the job's folder and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)


def drop_input(job: Job, keep_inputs: bool = False, objects: ObjectResults | None = None) -> None:
    """Delete the job's input if it is an upload (the job owns it), unless uploads are kept.

    Args:
        job: the job whose input goes.
        keep_inputs: ``TILESEG_KEEP_INPUTS``: keep the uploads of jobs that ended (not of canceled ones).
        objects: the S3 store where uploads are kept, if they are (TILESEG_RESULTS_URL).
    """
    if not job.input_owned or keep_inputs:
        return
    if objects is not None and objects.is_own_input(job):
        try:
            objectstore.delete(objects.input(job.id))
        except objectstore.ObjectStoreError:  # removed with the job's other objects when they expire
            log.warning("job %s: its upload was not removed from the store", job.id, exc_info=True)
    elif "://" not in job.input_path:
        Path(job.input_path).unlink(missing_ok=True)


def jobs_root(data_dir: str | Path) -> Path:
    """The folder that holds one folder per job."""
    return Path(data_dir) / "jobs"


__all__ = ["RESULT_OPTIONS", "JobFiles", "drop_input", "jobs_root"]
