"""``tileseg segment INPUT... --out-dir DIR``: many inputs in one run (:mod:`tileseg.cohorts`).

In this form the output options name formats, not paths: each input's outputs go to ``DIR/NAME/`` as
``mask.tif`` (``--mask-format zarr``: ``mask.zarr``), ``probabilities.tif`` (``--probabilities tif|zarr``) and
``vectors.gpkg`` (``--vectors gpkg|geojson|fgb|parquet``); and ``--workers N`` spreads the inputs over N
processes instead of splitting one image into bands. Exit status: 0 when every input succeeded or was skipped,
1 when any failed, 130 when interrupted (Ctrl-C or SIGTERM); a one-line summary is printed in each case.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from tileseg.cohorts.runner import OUTPUT_FORMATS

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
COHORT_FLAGS = ("recursive", "collections", "bbox", "datetime", "query", "max_items", "mask_format", "overwrite",
                "fail_fast")  # fmt: skip


def cohort_options(command: Callable) -> Callable:
    """The options of the many-inputs form (they reach the command in its ``**values``)."""
    options = [
        click.option(
            "--out-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Segment every INPUT into DIR/NAME/ (mask, and what --probabilities and --vectors ask, as "
            "formats), recording each in DIR/manifest.jsonl; the same command again resumes.",
        ),
        click.option("--recursive", is_flag=True, help="--out-dir: folders' sub-folders too; ** in globs."),
        click.option(
            "--stac-search", metavar="API_URL", help="--out-dir: also segment the items this STAC API's search finds."
        ),
        click.option("--collections", metavar="LIST", help="--stac-search: the collections, e.g. sentinel-2-l2a."),
        click.option("--bbox", metavar="W,S,E,N", help="--stac-search: the area, in degrees."),
        click.option(
            "--datetime", metavar="RANGE", help="--stac-search: e.g. 2024-06-01/2024-08-31, or 2024-06-01/..."
        ),
        click.option("--query", metavar="JSON", help='--stac-search: e.g. \'{"eo:cloud_cover": {"lt": 20}}\'.'),
        click.option("--max-items", type=click.IntRange(1), help="--stac-search: at most this many items."),
        click.option(
            "--mask-format",
            type=click.Choice(OUTPUT_FORMATS["mask"]),
            help="--out-dir: each mask as mask.tif (the default) or mask.zarr (then --probabilities zarr).",
        ),
        click.option("--overwrite", is_flag=True, help="--out-dir: redo the inputs an earlier run finished."),
        click.option("--fail-fast", is_flag=True, help="--out-dir: stop at the first input that fails."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def wants_many(values: dict[str, Any]) -> bool:
    """Whether the command runs in the many-inputs form; flags of that form without ``--out-dir`` are refused.

    Raises:
        click.UsageError: ``--stac-search`` or another flag of that form without ``--out-dir``.
    """
    if values.get("out_dir") is not None:
        return True
    given = [name for name in ("stac_search", *COHORT_FLAGS) if values.get(name)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise click.UsageError(f"{flag} is for many inputs: give --out-dir DIR")
    return False


def segment_many(paths: tuple[str, ...], model: str, device: str, probabilities: str | None, vectors: str | None,
                 devices: list[str] | None, quiet: bool, values: dict[str, Any],
                 objects: dict[str, str | None] | None = None) -> None:  # fmt: skip
    """Run the many-inputs form and exit with its status (0, 1 or 130) after a one-line summary.

    Raises:
        click.UsageError: an output option given as a path, a malformed search term, no INPUT at all.
        TilesegError: an INPUT that names nothing or cannot be read, a STAC API that does not answer, a model or
            options that cannot run (before anything is written).
    """
    from tileseg.cli.options import build
    from tileseg.cohorts.inputs import expand
    from tileseg.cohorts.runner import CohortInterrupted, CohortRun, run_cohort
    from tileseg.engine.options import SegmentOptions

    options = build(SegmentOptions, values)
    formats = {"mask": values.get("mask_format") or OUTPUT_FORMATS["mask"][0]}
    asked = {"probabilities": probabilities, "vectors": vectors, **(objects or {})}
    formats |= {kind: _format(kind, text) for kind, text in asked.items() if text}
    search = _search_terms(values)
    if not paths and search is None:
        raise click.UsageError("give at least one INPUT, or --stac-search API_URL")
    out_dir: Path = values["out_dir"]
    run = CohortRun(
        model, out_dir, options, device, formats, bool(values.get("overwrite")), bool(values.get("fail_fast"))
    )
    sources = expand(list(paths), bool(values.get("recursive")), search)
    with _bar(quiet, len(sources)) as reporter, _sigterm_interrupts():
        try:
            summary = run_cohort(run, sources, reporter, devices)
        except CohortInterrupted as stop:
            reporter.close()
            click.echo(f"interrupted: {stop.summary.line(out_dir / 'manifest.jsonl')}", err=True)
            sys.exit(EXIT_INTERRUPTED)
    click.echo(summary.line(out_dir / "manifest.jsonl"), err=True)
    sys.exit(EXIT_FAILED if summary.failed else 0)


def _format(kind: str, text: str) -> str:
    """An output option's value in the many-inputs form: a format of :data:`OUTPUT_FORMATS`."""
    value = text.strip().lower().lstrip(".")
    if value not in OUTPUT_FORMATS[kind]:
        choices = ", ".join(OUTPUT_FORMATS[kind])
        raise click.BadParameter(
            f"with --out-dir it names a format, one of {choices} (each input's goes to DIR/NAME/{kind}.FORMAT)",
            param_hint=f"--{kind}",
        )
    return value


def _search_terms(values: dict[str, Any]) -> dict[str, Any] | None:
    """The keyword arguments of :func:`tileseg.cohorts.stac_search.search_items`, or None without a search."""
    url = values.get("stac_search")
    if not url:
        for name in ("collections", "bbox", "datetime", "query", "max_items"):
            if values.get(name):
                raise click.UsageError(f"--{name.replace('_', '-')} is a term of a search: give --stac-search API_URL")
        return None
    bbox = None
    if values.get("bbox"):
        try:
            bbox = [float(v) for v in values["bbox"].split(",")]
        except ValueError:
            bbox = []
        if len(bbox) != 4:
            raise click.BadParameter("give four numbers, west,south,east,north in degrees", param_hint="--bbox")
    query = None
    if values.get("query"):
        try:
            query = json.loads(values["query"])
        except json.JSONDecodeError as err:
            raise click.BadParameter(f"not JSON: {err}", param_hint="--query") from None
        if not isinstance(query, dict):
            raise click.BadParameter('give a JSON object, e.g. {"eo:cloud_cover": {"lt": 20}}', param_hint="--query")
    collections = [c.strip() for c in (values.get("collections") or "").split(",") if c.strip()] or None
    return {"api_url": url, "collections": collections, "bbox": bbox, "datetime": values.get("datetime"),
            "query": query, "max_items": values.get("max_items")}  # fmt: skip


class _Bar:
    """The run's progress: one bar over the inputs; a failed input's error printed above it."""

    def __init__(self, quiet: bool, total: int):
        self.bar = tqdm(total=total, unit="image", disable=quiet, dynamic_ncols=True)

    def started(self, source) -> None:
        self.bar.set_description_str(source.name)

    def tiles(self, done: int, total: int) -> None:
        pass

    def finished(self, record: dict[str, Any]) -> None:
        if record["status"] in ("failed", "interrupted"):
            tqdm.write(f"{record['status']}: {record['input']}: {record.get('error')}", file=sys.stderr)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def _bar(quiet: bool, total: int) -> Iterator[_Bar]:
    bar = _Bar(quiet, total)
    try:
        yield bar
    finally:
        bar.close()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does (the input in flight recorded as interrupted)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a test's runner): leave SIGTERM as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["cohort_options", "segment_many", "wants_many"]
