"""One input's attempt: segment it into a staging folder, move the folder into place, and say what became of it
as a manifest record (:mod:`tileseg.cohorts.runner` says how the attempts make a run)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tileseg.cohorts.inputs import Source
from tileseg.cohorts.manifest import Status, options_hash, stamp
from tileseg.engine.errors import OptionsError
from tileseg.engine.options import SegmentOptions
from tileseg.errors import TilesegError
from tileseg.urls import mask_text

PARTIAL = ".partial"
# Each output of an input: its name (the file's stem, the manifest's key and the keyword of
# tileseg.engine.pipeline.segment) and the formats it may take, the first the default. A new kind of output
# is one entry here (and its flag on the command line).
OUTPUT_FORMATS: dict[str, tuple[str, ...]] = {
    "mask": ("tif", "zarr"),
    "probabilities": ("tif", "zarr"),
    "vectors": ("gpkg", "geojson", "fgb", "parquet"),
    "instances": ("tif",),
    "objects": ("csv", "parquet"),
}


@dataclass(frozen=True)
class CohortRun:
    """What a run over many inputs does with each.

    Attributes:
        model: an installed model's name or a checkpoint's path.
        out_dir: the folder that takes one folder of outputs per input and the manifest.
        options: the engine's options, the same for every input.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        formats: the outputs to write, by kind (:data:`OUTPUT_FORMATS`), with their format; ``mask`` always.
        overwrite: redo inputs that an earlier run finished.
        fail_fast: stop after the first input that fails.
    """

    model: str
    out_dir: Path
    options: SegmentOptions = field(default_factory=SegmentOptions)
    device: str = "auto"
    formats: Mapping[str, str] = field(default_factory=lambda: {"mask": "tif"})
    overwrite: bool = False
    fail_fast: bool = False

    def __post_init__(self) -> None:
        for kind, fmt in self.formats.items():
            if kind not in OUTPUT_FORMATS:
                raise OptionsError(f"no output {kind!r}: the outputs are {', '.join(OUTPUT_FORMATS)}")
            if fmt not in OUTPUT_FORMATS[kind]:
                raise OptionsError(
                    f"--{kind}: {fmt!r} is no format of it; give one of {', '.join(OUTPUT_FORMATS[kind])}"
                )
        if "mask" not in self.formats:
            object.__setattr__(self, "formats", {"mask": "tif", **self.formats})

    def settings_hash(self) -> str:
        """The options hash of the manifest: the model, every option and the outputs' formats."""
        return options_hash(
            {"model": self.model, "options": self.options.model_dump(mode="json"), "formats": dict(self.formats)}
        )

    def output_paths(self, folder: Path) -> dict[str, Path]:
        """Each output's path in ``folder``: ``mask.tif``, ``vectors.gpkg``..."""
        return {kind: folder / f"{kind}.{fmt}" for kind, fmt in self.formats.items()}


class Reporter(Protocol):
    """What the caller is told as the run goes (the command line draws its progress from it)."""

    def started(self, source: Source) -> None: ...
    def tiles(self, done: int, total: int) -> None: ...
    def finished(self, record: dict[str, Any]) -> None: ...


class Silent:
    """A :class:`Reporter` that says nothing."""

    def started(self, source: Source) -> None:
        pass

    def tiles(self, done: int, total: int) -> None:
        pass

    def finished(self, record: dict[str, Any]) -> None:
        pass


@dataclass
class Summary:
    """How many inputs ended how, and how long the run took."""

    counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Status})
    seconds: float = 0.0
    interrupted: bool = False

    def add(self, record: dict[str, Any]) -> None:
        self.counts[record["status"]] += 1

    @property
    def failed(self) -> int:
        return self.counts[Status.FAILED.value]

    def line(self, manifest: Path) -> str:
        """The one-line summary the command prints."""
        done = self.counts[Status.SUCCEEDED.value]
        rate = f", {done / self.seconds:.2f} images/s" if done and self.seconds > 0 else ""
        parts = ", ".join(f"{n} {s}" for s, n in self.counts.items() if n or s in ("succeeded", "failed"))
        return f"{parts} in {self.seconds:.1f} s{rate}; manifest {manifest}"


class CohortInterrupted(KeyboardInterrupt):
    """The run was stopped by Ctrl-C or SIGTERM; the input in flight is recorded as ``interrupted``."""

    def __init__(self, summary: Summary):
        super().__init__("interrupted")
        self.summary = summary


def load_model(run: CohortRun, device: str | None = None, threads: int | None = None):
    """The run's network on ``device`` (default: the run's), checked against the run's tile options and
    outputs before any input is read.

    Raises:
        ModelNotFoundError and the models' errors; TileGeometryError; OptionsError (an output format this
        installation cannot write, Zarr and GeoTIFF outputs mixed, --cog with Zarr).
    """
    from tileseg import models
    from tileseg.engine.outputs import check_outputs
    from tileseg.engine.runtime.device import configure_threads, pick_device
    from tileseg.engine.tiling import tile_settings
    from tileseg.engine.zarr.sink import check_zarr_paths, is_zarr_path

    configure_threads(threads)
    paths = run.output_paths(run.out_dir / PARTIAL / "check")
    # unknown formats, unwritable folders, objects of a model without them: refused before any work
    check_outputs(models.card_spec(run.model), paths.get("vectors"), paths.get("instances"), paths.get("objects"))
    if is_zarr_path(paths["mask"]) or is_zarr_path(paths.get("probabilities")):
        check_zarr_paths(paths["mask"], paths.get("probabilities"), run.options.cog)
    extra = {"prune": run.options.prune} if run.options.prune is not None else {}
    model = models.load(run.model, device=pick_device(device or run.device), **extra)
    tile_settings(model.spec, run.options)
    return model


def segment_one(model, run: CohortRun, source: Source, reporter: Reporter, record: Callable[[dict], None]) -> None:
    """Segment one input into ``DIR/NAME/`` and hand its manifest record (``succeeded`` or ``failed``) to
    ``record``; its staging folder is removed whatever happens.

    The move into place and ``record`` run :func:`uninterrupted`: a Ctrl-C or SIGTERM that comes meanwhile
    takes effect after both, so an input's outputs are in place exactly when its record says ``succeeded``.

    Raises:
        KeyboardInterrupt: passed on, after the staging folder is removed.
    """
    from tileseg.engine.io.fetch import readable
    from tileseg.engine.pipeline import segment

    started = time.perf_counter()
    staging = run.out_dir / PARTIAL / f"{source.name}.{os.getpid()}"
    remove(staging)
    staging.mkdir(parents=True)
    paths = run.output_paths(staging)
    extra = {kind: path for kind, path in paths.items() if kind != "mask"}
    base = {"input": source.shown, "name": source.name, "options_hash": run.settings_hash()}
    try:
        try:
            opened = source.opened()
            with readable(opened) if isinstance(opened, str) else contextlib.nullcontext(opened) as local:
                result = segment(model, local, paths["mask"], run.options, progress=reporter.tiles, **extra)
        except Exception as err:  # any input's failure is recorded, and the run goes on
            with uninterrupted():
                record(_failed(base, started, err))
            return
        kept = {kind: path.name for kind, path in paths.items() if path.exists()}  # no polygons: no vector file
        outputs = {kind: f"{source.name}/{name}" for kind, name in kept.items()}
        done = {
            **base,
            "status": Status.SUCCEEDED.value,
            "outputs": outputs,
            "seconds": round(time.perf_counter() - started, 3),
            "pixels": result.input.width * result.input.height,
            "runtime": result.runtime.runtime,
            "device": result.runtime.device,
            "stamp": stamp(paths["mask"]),  # the move into place keeps its size and modification time
            "warnings": list(result.warnings),
        }
        with uninterrupted():
            try:
                commit(staging, run.out_dir / source.name)
            except OSError as err:
                done = _failed(base, started, err)
            record(done)
    finally:
        remove(staging)


def _failed(base: dict[str, Any], started: float, err: BaseException) -> dict[str, Any]:
    seconds = round(time.perf_counter() - started, 3)
    return {**base, "status": Status.FAILED.value, "outputs": {}, "seconds": seconds, "pixels": None,
            "runtime": None, "device": None, "error": one_line(err)}  # fmt: skip


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block ends, then act on the first one that came as its
    handler would have. Outside the main thread (where no signal handler runs) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: came.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if came:
            handler = previous[signal.Signals(came[0])]
            if callable(handler):
                handler(came[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(came[0])


def interrupted_record(run: CohortRun, source: Source, started: float) -> dict[str, Any]:
    return {"input": source.shown, "name": source.name, "options_hash": run.settings_hash(),
            "status": Status.INTERRUPTED.value, "outputs": {}, "seconds": round(time.perf_counter() - started, 3),
            "pixels": None, "runtime": None, "device": None, "error": "interrupted (Ctrl-C or SIGTERM)"}  # fmt: skip


def commit(staging: Path, target: Path) -> None:
    """Move the folder ``staging`` into place as ``target`` with one rename (an existing ``target`` moved aside
    first, and removed after), and flush the rename to disk."""
    old = staging.with_name(staging.name + ".old")
    if target.exists() or target.is_symlink():
        remove(old)
        os.rename(target, old)
    os.rename(staging, target)
    fsync_folder(target.parent)
    remove(old)


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Remove a file or a folder, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def one_line(err: BaseException) -> str:
    """An error as one line, its URLs masked: the product's message, else the exception's type and text."""
    text = str(err) if isinstance(err, TilesegError) else f"{type(err).__name__}: {err}"
    return mask_text(" ".join(text.split()))[:500]


__all__ = [
    "OUTPUT_FORMATS",
    "PARTIAL",
    "CohortInterrupted",
    "CohortRun",
    "Reporter",
    "Silent",
    "Summary",
    "commit",
    "interrupted_record",
    "load_model",
    "one_line",
    "remove",
    "segment_one",
    "uninterrupted",
]
