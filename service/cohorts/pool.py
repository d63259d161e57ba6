"""``--workers N`` over many inputs: N processes, each loading the model once and taking the next input as soon
as it is free; the parent alone writes the manifest.

This differs from ``--workers`` on one image (:mod:`tileseg.engine.shards`), which splits ONE image into bands of
tile rows; here each input is run whole by one process, so that N inputs compute at once. Each process gets
``cores // N`` torch threads (small images keep few threads busy: several processes use the cores better).

The processes ignore SIGINT: Ctrl-C reaches the parent, which stops them (SIGTERM), records their inputs as
``interrupted`` and removes their staging folders. A process holds SIGTERM while it moves an input's outputs
into place and sends its record, and the parent writes a record received before it acts on Ctrl-C, so an input
whose outputs are in place is recorded ``succeeded``, never ``interrupted``. A process that dies (out of
memory, killed) fails its input with the exit code, and a new one takes its place.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Any

from tileseg.cohorts.attempt import (
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
    uninterrupted,
)
from tileseg.cohorts.inputs import Source
from tileseg.cohorts.manifest import Manifest, Status
from tileseg.errors import TilesegError


class Worker:
    """One process with the model loaded, and the input it runs (if any)."""

    def __init__(self, ctx: Any, run: CohortRun, device: str, threads: int):
        self.args = (run, device, threads)
        self.ctx = ctx
        self.task: tuple[Source, float] | None = None
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.process = self.ctx.Process(target=_serve, args=(child, *self.args), daemon=True, name="tileseg-cohort")
        self.process.start()
        child.close()

    def send(self, source: Source) -> None:
        self.task = (source, time.perf_counter())
        self.conn.send(source)

    def stop(self, force: bool = False) -> None:
        if self.process.is_alive():
            if force:
                self.process.terminate()
            else:
                try:
                    self.conn.send(None)
                except OSError:
                    self.process.terminate()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _serve(conn, run: CohortRun, device: str, threads: int) -> None:
    """A worker process: load the model once, then run each input sent until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        model = load_model(run, device, threads)
    except TilesegError as err:
        conn.send(("fatal", str(err)))
        return
    conn.send(("ready", None))
    while (source := conn.recv()) is not None:
        segment_one(model, run, source, Silent(), lambda record: conn.send(("done", record)))


def run_pool(
    run: CohortRun, todo: list[Source], manifest: Manifest, summary: Summary, reporter: Reporter, devices: list[str]
) -> None:
    """Run ``todo`` over one process per entry of ``devices``, recording each input as it ends.

    Raises:
        CohortInterrupted: Ctrl-C or SIGTERM, after the workers are stopped and their inputs recorded.
        TilesegError: a worker could not load the model.
    """
    ctx = multiprocessing.get_context("spawn")  # torch's threads and a forked parent do not mix
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // len(devices))
    queue = deque(todo)
    workers = [Worker(ctx, run, device, threads) for device in devices[: max(1, len(todo))]]
    stopping = False
    try:
        while queue or any(w.task for w in workers):
            for worker in workers:
                if queue and not stopping and worker.task is None:
                    reporter.started(queue[0])
                    worker.send(queue.popleft())
            busy = [w for w in workers if w.task is not None]
            if not busy:
                break  # fail-fast: nothing in flight, nothing more to start
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                with uninterrupted():  # a record received is written before Ctrl-C takes effect
                    record = _collect(worker, ready, run)
                    if record is None:
                        continue
                    manifest.append(record)
                    summary.add(record)
                    reporter.finished(record)
                if run.fail_fast and record["status"] == Status.FAILED.value:
                    stopping = True  # the inputs in flight still finish
    except KeyboardInterrupt:
        _interrupt(workers, run, manifest, summary, reporter)
        raise CohortInterrupted(summary) from None
    finally:
        for worker in workers:
            worker.stop(force=summary.interrupted)


def _collect(worker: Worker, ready: list, run: CohortRun) -> dict[str, Any] | None:
    """The record of the input ``worker`` ended, if it did (a dead worker fails its input and is replaced)."""
    if worker.conn in ready and worker.conn.poll():
        try:
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            kind, payload = "died", None
        if kind == "ready":
            return None
        if kind == "fatal":
            raise TilesegError(payload)
        if kind == "done":
            worker.task = None
            return payload
    if worker.process.is_alive() or worker.task is None:
        return None
    source, began = worker.task
    worker.process.join()
    record = interrupted_record(run, source, began)
    code = worker.process.exitcode
    record.update(status=Status.FAILED.value, error=f"the worker process running it died (exit code {code})")
    remove(run.out_dir / PARTIAL / f"{source.name}.{worker.process.pid}")
    worker.task = None
    worker.start()
    return record


def _interrupt(workers: list[Worker], run: CohortRun, manifest: Manifest, summary: Summary, reporter) -> None:
    """Stop every worker at once; record each input in flight as interrupted, its staging folder removed."""
    summary.interrupted = True
    for worker in workers:
        if worker.process.is_alive():
            worker.process.terminate()
    for worker in workers:
        worker.process.join(timeout=30)
        if worker.task is not None:
            source, began = worker.task
            remove(run.out_dir / PARTIAL / f"{source.name}.{worker.process.pid}")
            record = _sent(worker) or interrupted_record(run, source, began)
            manifest.append(record)
            summary.add(record)
            reporter.finished(record)
            worker.task = None


def _sent(worker: Worker) -> dict[str, Any] | None:
    """The record a stopped worker sent before it stopped, if any: it finished its input (moved into place)."""
    try:
        while worker.conn.poll():
            kind, payload = worker.conn.recv()
            if kind == "done":
                return payload
    except (EOFError, OSError):
        pass
    return None


__all__ = ["run_pool"]
