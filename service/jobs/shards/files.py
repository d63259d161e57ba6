"""Where the shard files of a sharded job lie: every place they are written, listed, read or deleted.

Each attempt at a shard writes into a folder of its own, ``jobs/<id>/shards/<number>-<token>/`` (an attempt
that lost its lease may still be writing when another attempt at the same shard runs); the shard's row in the
job table names the attempt whose files count (``published``), and records what they hold
(:func:`result_record`). The assembly opens them by path strings (:func:`shard_result`), which rasterio
opens wherever they lie. They are all removed once the job has ended, whichever way (:func:`remove_all`).

With results in S3 (``TILESEG_RESULTS_URL``), workers share no disk: an attempt writes its files into its
folder on its own machine, then puts them under ``<prefix>jobs/<id>/shards/<number>-<token>/``
(:func:`put_attempt`) before it ends the shard, and the assembly reads them from there by range requests.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from tileseg import objectstore
from tileseg.engine.shards.run import ShardResult
from tileseg.jobs.files import JobFiles
from tileseg.jobs.objects import ObjectResults
from tileseg.jobs.shards.store import Shard

log = logging.getLogger(__name__)


def shards_root(files: JobFiles) -> Path:
    """The folder of a job's shard files."""
    return files.root / "shards"


def attempt_folder(files: JobFiles, number: int, token: str) -> Path:
    """Where the attempt ``token`` at shard ``number`` writes its files (not made here).

    Raises:
        ValueError: the token is not one the job table makes (hex).
    """
    if not re.fullmatch(r"[0-9a-f]{8,64}", str(token)):
        raise ValueError(f"not an attempt token: {token!r}")
    return shards_root(files) / f"{int(number):04d}-{token}"


def make_attempt_folder(files: JobFiles, number: int, token: str) -> Path:
    """:func:`attempt_folder`, made (with its parents)."""
    folder = attempt_folder(files, number, token)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def put_attempt(files: JobFiles, number: int, token: str, objects: ObjectResults | None) -> None:
    """With results in S3: put the attempt's files under its keys, then remove them from this machine."""
    if objects is None:
        return
    folder = attempt_folder(files, number, token)
    objects.put_folder(folder, objects.shard_attempt(files.root.name, folder.name))
    shutil.rmtree(folder, ignore_errors=True)
    for empty in (shards_root(files), files.root):  # this machine's folders of the job were scratch space
        try:
            empty.rmdir()
        except OSError:  # another attempt's files are still there
            break


def result_record(result: ShardResult) -> dict[str, Any]:
    """What the shard's row keeps of a finished attempt: its rows of the image, its files' names, its counts."""
    return {
        "y": result.y,
        "height": result.height,
        "mask": Path(result.mask).name,
        "probabilities": Path(result.probabilities).name if result.probabilities else None,
        "tiles_total": result.tiles_total,
        "tiles_skipped": result.tiles_skipped,
        "seconds": round(result.seconds, 3),
        "runtime": result.runtime,
    }


def shard_result(files: JobFiles, shard: Shard, objects: ObjectResults | None = None) -> ShardResult:
    """A done shard as the assembly reads it: its published attempt's files by path (``/vsis3/`` paths with
    results in S3).

    Raises:
        ValueError: the shard is not done.
    """
    record = shard.result
    if shard.published is None or record is None:
        raise ValueError(f"shard {shard.number + 1} of job {shard.job_id} is {shard.status.value}, not done")
    local = attempt_folder(files, shard.number, shard.published)

    def path(name: str) -> str:
        if objects is None:
            return str(local / name)
        return objects.shard_attempt(shard.job_id, local.name).join(name).gdal_path

    probabilities = record.get("probabilities")
    return ShardResult(
        index=shard.number,
        y=int(record["y"]),
        height=int(record["height"]),
        mask=path(record["mask"]),
        probabilities=path(probabilities) if probabilities else None,
        tiles_total=int(record["tiles_total"]),
        tiles_skipped=int(record["tiles_skipped"]),
        seconds=float(record["seconds"]),
        runtime=str(record["runtime"]),
    )


def remove_attempt(files: JobFiles, number: int, token: str, objects: ObjectResults | None = None) -> None:
    """Remove what one attempt at a shard wrote (an attempt that did not finish the shard), and the shards
    folder once empty."""
    folder = attempt_folder(files, number, token)
    shutil.rmtree(folder, ignore_errors=True)
    if objects is not None:
        _quietly(objectstore.delete_prefix, objects.shard_attempt(files.root.name, folder.name))
    try:
        shards_root(files).rmdir()
    except OSError:  # other shards' files are there, or it is gone already
        pass


def remove_all(files: JobFiles, objects: ObjectResults | None = None) -> None:
    """Remove every shard file of the job (it has ended: published, failed or canceled)."""
    shutil.rmtree(shards_root(files), ignore_errors=True)
    if objects is not None:
        _quietly(objectstore.delete_prefix, objects.shards(files.root.name))


def _quietly(remove, url) -> None:
    try:
        remove(url)
    except objectstore.ObjectStoreError:  # the sweeper removes the job's leftover objects
        log.warning("%s could not be removed", url, exc_info=True)


def has_any(files: JobFiles) -> bool:
    """Whether the job has shard files left (for the sweeper and the tests)."""
    root = shards_root(files)
    return root.is_dir() and any(root.iterdir())


__all__ = [
    "attempt_folder",
    "has_any",
    "make_attempt_folder",
    "put_attempt",
    "remove_all",
    "remove_attempt",
    "result_record",
    "shard_result",
    "shards_root",
]
