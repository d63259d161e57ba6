"""``tileseg segment --instances PATH --objects PATH``: the objects of a model with an instance decoding.

A local run passes them to the engine (:func:`tileseg.engine.run_file`, or its sharded form), which refuses them,
before any work, for a model without an instance decoding; with ``--server`` they ask the job for
``instances=true`` and the files are fetched once it succeeded (:meth:`tileseg.client.Client.segment`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from tileseg import objectstore


@dataclass(frozen=True)
class ObjectPaths:
    """Where the objects go: the label GeoTIFF and the table (None: not asked)."""

    instances: str | None = None
    objects: str | None = None

    def keywords(self) -> dict[str, str | None]:
        """The engine's and the client's keywords."""
        return {"instances": self.instances, "objects": self.objects}


def object_options(command: Callable) -> Callable:
    """The options ``--instances`` and ``--objects`` (they reach the command in its ``**values``)."""
    options = [
        click.option(
            "--instances",
            metavar="PATH",
            help="Also write the objects (a model with an instance decoding, e.g. unet-nuclei) as a uint32 label "
            "GeoTIFF on the mask's grid: 0 no object, 1..N one object each. With it, --vectors writes one feature "
            "per object. With --out-dir, a format: tif.",
        ),
        click.option(
            "--objects",
            metavar="PATH",
            help="Also write one row per object (id, class, area, perimeter, centroid, probability, band means) "
            "to this table, .csv or .parquet (a model with an instance decoding). With --out-dir, a format: csv "
            "or parquet.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def object_paths(values: dict[str, Any]) -> ObjectPaths:
    """Take ``--instances`` and ``--objects`` out of the command's ``values``.

    Raises:
        click.UsageError: at an ``s3://`` URL (local files only).
    """
    paths = ObjectPaths(values.pop("instances", None), values.pop("objects", None))
    given = [(flag, text) for flag, text in (("--instances", paths.instances), ("--objects", paths.objects)) if text]
    for flag, text in given:
        if objectstore.is_s3(text):
            raise click.UsageError(f"{flag}: a local path (write it here, then copy it to the store)")
    return paths


def report_objects(counts: dict[str, int] | None, quiet: bool) -> None:
    """Print the objects found per class (``objects: 412 nucleus``), when the run made objects."""
    if counts is None or quiet:
        return
    found = ", ".join(f"{count} {name}" for name, count in counts.items()) or "none"
    click.echo(f"objects: {found}", err=True)


__all__ = ["ObjectPaths", "object_options", "object_paths", "report_objects"]
