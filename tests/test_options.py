"""One options model: the command line, the HTTP form (and its schema) and the job record are made from it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tileseg.api.errors import RequestError
from tileseg.api.schemas import FORM_FIELDS, SEGMENT_FORM_SCHEMA, SegmentForm
from tileseg.cli import cli
from tileseg.cli import segment as segment_command
from tileseg.engine.options import MAX_TILE, SegmentOptions, scope
from tileseg.jobs.intake import JobOptions, JobOptionsRecord, form_fields


def test_every_engine_option_is_a_command_line_option():
    flags = {p.name for p in segment_command.params}
    assert set(SegmentOptions.model_fields) <= flags


def test_the_form_schema_and_the_job_record_hold_the_form_fields_only():
    fields = form_fields()
    assert set(fields) == {n for n in JobOptions.model_fields if scope(JobOptions, n) != "cli"}
    assert {"batch", "readers", "compile"}.isdisjoint(fields), "the server decides these"
    assert set(SEGMENT_FORM_SCHEMA["properties"]) == {"file", "source", "model", "callback", *fields} == FORM_FIELDS
    assert set(JobOptionsRecord.model_fields) == set(fields)
    assert set(JobOptions(tile=64).to_record()) == set(fields)


def test_the_schema_carries_the_models_constraints():
    tile = SEGMENT_FORM_SCHEMA["properties"]["tile"]
    assert tile["type"] == "integer" and tile["minimum"] == 1 and tile["maximum"] == MAX_TILE
    overlap = SEGMENT_FORM_SCHEMA["properties"]["overlap"]
    assert overlap["minimum"] == 0 and overlap["exclusiveMaximum"] == 1
    assert SEGMENT_FORM_SCHEMA["properties"]["precision"]["enum"] == ["auto", "fp32", "bf16", "fp16", "int8"]
    assert SEGMENT_FORM_SCHEMA["properties"]["tta"]["type"] == "boolean"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tile", str(MAX_TILE + 1)], f"less than or equal to {MAX_TILE}"),
        (["--bands", "0,1"], "band numbers start at 1"),
        (["--bands", "1;2"], "separated by commas"),
        (["--overlap", "1.5"], "less than 1"),
    ],
)
def test_the_command_line_refuses_what_the_model_refuses(tmp_path, args, message):
    result = CliRunner().invoke(
        cli, ["segment", str(tmp_path / "in.tif"), str(tmp_path / "out.tif"), "--model", "any", *args]
    )
    assert result.exit_code == 2 and message in result.output


def test_the_form_parses_text_fields_and_refuses_the_servers_own():
    form, options = SegmentForm.parse({"model": "m", "tile": "64", "bands": "1,2", "tta": "true"}, has_file=True)
    assert (options.tile, options.bands, options.tta) == (64, (1, 2), True)
    with pytest.raises(RequestError, match="batch: not a field"):
        SegmentForm.parse({"model": "m", "batch": "64"}, has_file=True)
    with pytest.raises(RequestError, match="tile"):
        SegmentForm.parse({"model": "m", "tile": str(MAX_TILE + 1)}, has_file=True)


def test_a_job_runs_with_the_servers_batch():
    options = JobOptions(tile=64, probabilities=True).segment_options(batch=16)
    assert isinstance(options, SegmentOptions) and options.batch == 16 and options.tile == 64
