"""``tileseg tune``: the first run's measuring done ahead of time, and found by the runs that follow."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tileseg import models
from tileseg.cli import cli
from tileseg.engine import SegmentOptions
from tileseg.engine.runtime.tuner import known_choice


def test_tune_measures_once_and_segment_finds_the_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("TILESEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TILESEG_TUNE_SECONDS", "0.5")  # cut short: tune goes on until the search is done
    monkeypatch.setenv("TILESEG_MEMORY_BUDGET", "200MB")  # ... which the budget keeps to a few windows
    model = models.load("unet-em")
    assert known_choice(model, SegmentOptions()) is None  # nothing measured in this cache yet
    first = CliRunner().invoke(cli, ["tune", "unet-em", "--size", "1024"])
    assert first.exit_code == 0, first.output
    assert "unet-em:" in first.output and "measured in" in first.output
    choice = known_choice(model, SegmentOptions())
    assert choice is not None and choice.summary()["numeric_path"] in first.output
    again = CliRunner().invoke(cli, ["tune", "unet-em", "--size", "1024"])
    assert again.exit_code == 0 and "already measured" in again.output
    assert any(p.suffix == ".json" for p in (tmp_path / "cache").rglob("*")), json.dumps(
        [str(p) for p in (tmp_path / "cache").rglob("*")]
    )


def test_tune_needs_a_model():
    result = CliRunner().invoke(cli, ["tune"])
    assert result.exit_code == 2 and "name at least one MODEL" in result.output
