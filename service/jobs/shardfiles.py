"""Where the shard files of a sharded job lie: every place they are written, listed, read or deleted.

Each attempt at a shard writes into a folder of its own, ``jobs/<id>/shards/<number>-<token>/`` (an attempt
that lost its lease may still be writing when another attempt at the same shard runs); the shard's row in the
job table names the attempt whose files count (``published``), and records what they hold
(:func:`result_record`). The assembly opens them by path strings (:func:`shard_result`), which rasterio
opens wherever they lie. They are all removed once the job has ended, whichever way (:func:`remove_all`).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from tileseg.engine.shards import ShardResult
from tileseg.jobs.files import JobFiles
from tileseg.jobs.shardstore import Shard


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


def shard_result(files: JobFiles, shard: Shard) -> ShardResult:
    """A done shard as the assembly reads it: its published attempt's files by path.

    Raises:
        ValueError: the shard is not done.
    """
    record = shard.result
    if shard.published is None or record is None:
        raise ValueError(f"shard {shard.number + 1} of job {shard.job_id} is {shard.status.value}, not done")
    folder = attempt_folder(files, shard.number, shard.published)
    probabilities = record.get("probabilities")
    return ShardResult(
        index=shard.number,
        y=int(record["y"]),
        height=int(record["height"]),
        mask=str(folder / record["mask"]),
        probabilities=str(folder / probabilities) if probabilities else None,
        tiles_total=int(record["tiles_total"]),
        tiles_skipped=int(record["tiles_skipped"]),
        seconds=float(record["seconds"]),
        runtime=str(record["runtime"]),
    )


def remove_attempt(files: JobFiles, number: int, token: str) -> None:
    """Remove what one attempt at a shard wrote (an attempt that did not finish the shard), and the shards
    folder once empty."""
    shutil.rmtree(attempt_folder(files, number, token), ignore_errors=True)
    try:
        shards_root(files).rmdir()
    except OSError:  # other shards' files are there, or it is gone already
        pass


def remove_all(files: JobFiles) -> None:
    """Remove every shard file of the job (it has ended: published, failed or canceled)."""
    shutil.rmtree(shards_root(files), ignore_errors=True)


def has_any(files: JobFiles) -> bool:
    """Whether the job has shard files left (for the sweeper and the tests)."""
    root = shards_root(files)
    return root.is_dir() and any(root.iterdir())


__all__ = [
    "attempt_folder",
    "has_any",
    "make_attempt_folder",
    "remove_all",
    "remove_attempt",
    "result_record",
    "shard_result",
    "shards_root",
]
