"""Where a job's files lie: ``DATA_DIR/jobs/<id>/``, named by the server, never by a client.

A job id is a UUID the server made; it is checked again here, so that no string can lead out of the
jobs folder.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path


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
    def preview(self) -> Path:
        return self.root / "preview.png"

    def results(self) -> list[Path]:
        return [self.mask, self.probabilities, self.preview]

    def remove_results(self) -> None:
        for path in self.results():
            path.unlink(missing_ok=True)

    def remove(self) -> None:
        """Remove the job's folder and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)


def jobs_root(data_dir: str | Path) -> Path:
    """The folder that holds one folder per job."""
    return Path(data_dir) / "jobs"


__all__ = ["JobFiles", "jobs_root"]
