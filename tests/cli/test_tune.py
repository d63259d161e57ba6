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


def test_tune_again_measures_the_window_anew_and_keeps_the_numeric_path(tmp_path, monkeypatch):
    """``--again`` forgets the points and searches (a search made on a busy machine is otherwise kept for good)
    but not the numeric path: a path recorded by hand here, not the one a new search would choose, is kept."""
    monkeypatch.setenv("TILESEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TILESEG_TUNE_SECONDS", "0.5")
    monkeypatch.setenv("TILESEG_MEMORY_BUDGET", "200MB")  # a few windows: the test's time is the path's search
    first = CliRunner().invoke(cli, ["tune", "unet-em", "--size", "512"])
    assert first.exit_code == 0 and "measured in" in first.output, first.output
    path = tmp_path / "cache" / "runtime.json"
    data = json.loads(path.read_text())
    (entry,) = data.values()
    (signature,) = entry["paths"]
    chosen = entry["paths"][signature]["runtime"]
    kept = "fp32/contiguous/eager" if chosen != "fp32/contiguous/eager" else "fp32/channels_last/eager"
    entry["paths"][signature] = {"runtime": kept, "why": "recorded by the test"}
    path.write_text(json.dumps(data))
    again = CliRunner().invoke(cli, ["tune", "unet-em", "--size", "512", "--again"])
    assert again.exit_code == 0 and "measured in" in again.output, again.output
    assert f"unet-em: {kept}," in again.output
    (entry,) = json.loads(path.read_text()).values()
    assert entry["paths"][signature]["runtime"] == kept
    assert {m["runtime"] for m in entry["measurements"]} == {kept}, "only the kept path's windows measured"
    assert entry["searches"], "the window search recorded anew"


def test_tune_needs_a_model():
    result = CliRunner().invoke(cli, ["tune"])
    assert result.exit_code == 2 and "name at least one MODEL" in result.output
