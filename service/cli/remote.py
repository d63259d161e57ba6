"""``tileseg segment --server URL`` and ``tileseg models --server URL``: the same commands, run by a server
through :mod:`tileseg.client`.

Only the options the server's form takes travel; one given on the command line that the server decides
itself (its batch, its reader threads, the device) is a usage error rather than silently dropped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from tqdm import tqdm

from tileseg.cli.objects import ObjectPaths, report_objects
from tileseg.client import Client
from tileseg.engine.options import SegmentOptions, scope

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C

# the command's own parameters that mean something on this machine only, with why a server cannot take them
LOCAL_ONLY = {"weights_path": "--weights (the server runs the models it serves: give --model)", "device": "--device"}


def given(ctx: click.Context, names: list[str]) -> list[str]:
    """Of ``names``, the parameters the user set (on the command line or through the environment)."""
    return [n for n in names if ctx.get_parameter_source(n) not in (ParameterSource.DEFAULT, None)]


def server_options(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options to send: those the user gave, by name and value as the form takes them.

    Raises:
        click.UsageError: a given option that only a local run takes.
    """
    local = [LOCAL_ONLY[n] for n in given(ctx, list(LOCAL_ONLY))]
    local += [f"--{n.replace('_', '-')}" for n in given(ctx, list(values)) if scope(SegmentOptions, n) == "cli"]
    if local:
        raise click.UsageError(f"{', '.join(local)}: not with --server (the server decides these itself)")
    return {n: values[n] for n in given(ctx, list(values)) if values[n] is not None}


def segment_remote(
    client: Client,
    input_path: str,
    output_path: Path,
    model: str,
    options: dict[str, Any],
    vectors: Path | None,
    probabilities: Path | None,
    quiet: bool,
    objects: ObjectPaths = ObjectPaths(),
) -> None:
    """Run the segmentation as a job on the server, the server's tiles in the progress bar, and write the
    results here (``objects``: the objects' files, which ask the job for ``instances=true``); Ctrl-C cancels
    the job on the server and exits with 130."""
    with tqdm(total=0, unit="tile", disable=quiet, desc=Path(input_path).name) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            job = client.segment(
                input_path, output_path, model, vectors, probabilities, progress, **objects.keywords(), **options
            )
        except KeyboardInterrupt:
            bar.close()
            click.echo("interrupted: the job was canceled on the server", err=True)
            sys.exit(EXIT_INTERRUPTED)
    result = job.get("result") or {}
    for note in result.get("warnings", []):
        click.echo(f"warning: {note}", err=True)
    if not quiet:
        info = job["input"]
        click.echo(
            f"{output_path}: {info['width']}x{info['height']}, {job['progress']['tiles_total']} tiles, "
            f"{job['timings']['seconds'] or 0:.1f} s on {client.url.rstrip('/')} (job {job['id']})",
            err=True,
        )
    report_objects(result.get("objects"), quiet)


__all__ = ["EXIT_INTERRUPTED", "given", "segment_remote", "server_options"]
