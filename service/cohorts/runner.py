"""Many inputs through one loaded model: each input's outputs staged, then moved into place, then recorded.

For each input, in order:

1. skip it when the manifest's last attempt for it succeeded with the same options hash and its outputs are
   there, its mask unchanged since (``overwrite`` redoes it): a ``skipped`` line;
2. segment it into ``DIR/.partial/NAME.PID/`` (the engine's sinks write temporary names there and rename them
   when complete);
3. move the whole folder into place as ``DIR/NAME/`` with one rename (an older ``DIR/NAME/`` is moved aside
   first, then removed);
4. append its line to the manifest (:mod:`tileseg.cohorts.manifest`), flushed to disk.

So a SIGKILL at any moment loses at most the inputs in flight: a folder moved into place whose line was not yet
written is not trusted (no line, or an older line whose mask stamp no longer matches), and is done again; the
staging folders are removed when a run starts. A failing input is recorded and the run goes on (``fail_fast``
stops after it); Ctrl-C or SIGTERM stop the input in flight, remove its staging folder and record it as
``interrupted``. One run at a time may write into a folder: it holds a lock on ``DIR/.lock``.

The model is loaded once per process and the tuner's choice (:func:`tileseg.engine.runtime.tuner.choose_runtime`)
is measured once per machine and kept, so every input after the first starts at once; while one input
computes, the next local file is read ahead into the page cache. With several workers
(:mod:`tileseg.cohorts.pool`) each process loads the model once and takes the next input when it is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tileseg.cohorts.attempt import (
    OUTPUT_FORMATS,
    PARTIAL,
    CohortInterrupted,
    CohortRun,
    Reporter,
    Silent,
    Summary,
    interrupted_record,
    load_model,
    remove,
    segment_one,
)
from tileseg.cohorts.errors import OutDirBusyError
from tileseg.cohorts.inputs import Source
from tileseg.cohorts.manifest import MANIFEST, Manifest, Status
from tileseg.cohorts.pool import run_pool

LOCK = ".lock"


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[Manifest]:
    """``out_dir`` (made if missing) held by this run, its staging folders of earlier runs removed.

    Raises:
        OutDirBusyError: another run holds it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise OutDirBusyError(f"{out_dir}: another tileseg run is writing here; wait for it to end") from err
        remove(out_dir / PARTIAL)  # what runs killed before left half-done
        try:
            yield Manifest(out_dir)
        finally:
            remove(out_dir / PARTIAL)
    finally:
        os.close(fd)  # the lock goes with it (and with the process, however it ends)


def read_ahead(source: Source) -> None:
    """Ask the OS to read a local input file into its page cache, in the background of the current input."""
    path = Path(source.location)
    if source.item is not None or "://" in source.location or not path.is_file() or not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def to_do(run: CohortRun, sources: list[Source], manifest: Manifest, summary: Summary) -> list[Source]:
    """The sources to segment; those done already (see :meth:`Manifest.done`) are recorded as skipped."""
    if run.overwrite:
        return list(sources)
    latest, settings_hash, todo = manifest.latest(), run.settings_hash(), []
    for source in sources:
        record = latest.get((source.name, source.shown))
        if manifest.done(record, settings_hash):
            skipped = {**record, "status": Status.SKIPPED.value, "seconds": 0.0, "at": None}
            manifest.append(skipped)
            summary.add(skipped)
        else:
            todo.append(source)
    return todo


def run_cohort(
    run: CohortRun, sources: list[Source], reporter: Reporter | None = None, devices: list[str] | None = None
) -> Summary:
    """Segment every source into ``run.out_dir``, recording each attempt in its manifest.

    Args:
        run: what to do with each input.
        sources: from :func:`tileseg.cohorts.inputs.expand` (or a search), with unique names.
        reporter: told as inputs start and end, or None.
        devices: one worker process per entry (:mod:`tileseg.cohorts.pool`), or None to run here.

    Returns:
        The counts per status and the run's seconds.

    Raises:
        CohortInterrupted: Ctrl-C or SIGTERM (its ``summary`` holds the counts so far).
        OutDirBusyError: another run writes into the folder. The model's and the options' errors, before
            anything is written.
    """
    started, reporter = time.perf_counter(), reporter or Silent()
    model = load_model(run) if not devices else None
    if devices:
        load_model(run, "cpu")  # checked here, once, before any worker starts or anything is written
    summary = Summary()
    try:
        with locked(run.out_dir) as manifest:
            todo = to_do(run, sources, manifest, summary)
            if devices:
                run_pool(run, todo, manifest, summary, reporter, devices)
            else:
                _run_here(model, run, todo, manifest, summary, reporter)
    finally:
        summary.seconds = time.perf_counter() - started
    return summary


def _run_here(model, run: CohortRun, todo: list[Source], manifest: Manifest, summary: Summary, reporter) -> None:
    flight: list[tuple[Source, float]] = []  # the input in flight, until its line is written

    def record(line: dict) -> None:  # runs uninterrupted (tileseg.cohorts.attempt.segment_one)
        manifest.append(line)
        flight.clear()
        summary.add(line)
        reporter.finished(line)

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tileseg-read-ahead") as ahead:
            for index, source in enumerate(todo):
                flight[:] = [(source, time.perf_counter())]
                if index + 1 < len(todo):
                    ahead.submit(read_ahead, todo[index + 1])
                reporter.started(source)
                segment_one(model, run, source, reporter, record)
                if run.fail_fast and summary.failed:
                    return
    except KeyboardInterrupt:
        summary.interrupted = True
        for source, began in flight:
            remove(run.out_dir / PARTIAL / f"{source.name}.{os.getpid()}")
            line = interrupted_record(run, source, began)
            manifest.append(line)
            summary.add(line)
            reporter.finished(line)
        raise CohortInterrupted(summary) from None


__all__ = [
    "LOCK",
    "MANIFEST",
    "OUTPUT_FORMATS",
    "CohortInterrupted",
    "CohortRun",
    "Summary",
    "locked",
    "run_cohort",
]
