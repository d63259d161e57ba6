"""``tileseg segment --instances/--objects``: what the command refuses before any work. (Runs that make objects,
locally and with ``--server``: ``tests/api/test_objects.py``; the engine's own refusal of a model without an
instance decoding: ``tests/instances/test_segment_objects.py``.)"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tileseg.cli import cli


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--out-dir", "out"], "with --out-dir it names a format, one of tif"),  # a path where a format goes
        (["--objects", "s3://bucket/objects.csv"], "--objects: a local path"),
    ],
)
def test_objects_refused_where_they_cannot_be_written(tmp_path, extra, message):
    args = ["segment", str(tmp_path / "in.tif"), str(tmp_path / "out.tif"), "--model", "unet-nuclei"]
    result = CliRunner().invoke(cli, [*args, "--instances", str(tmp_path / "labels.tif"), *extra])
    assert result.exit_code == 2 and message in result.output, result.output


def test_the_help_names_the_objects_options():
    result = CliRunner().invoke(cli, ["segment", "--help"])
    assert "--instances PATH" in result.output and "--objects PATH" in result.output
