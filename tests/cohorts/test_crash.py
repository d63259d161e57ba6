"""A run killed at random moments (SIGKILL), then the same command again: the outputs equal a clean run's, and
nothing finished before a kill is done again. Ctrl-C (SIGINT) stops cleanly: exit 130, the input in flight
recorded as interrupted, no output of it left. And an ``s3://`` prefix as INPUT (moto's S3 server)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cohorts.conftest import FIXED, manifest, read, run, write_em


def command(folder: Path, out: Path) -> list[str]:
    program = shutil.which("tileseg", path=str(Path(sys.executable).parent))
    assert program, "the tileseg command is not installed beside this Python"
    return [program, "segment", str(folder), "--out-dir", str(out), *FIXED]


def finished(out: Path) -> dict[str, int]:
    """The inputs the manifest records as succeeded, with their mask's modification time."""
    if not (out / "manifest.jsonl").exists():
        return {}
    done = {r["name"] for r in manifest(out) if r["status"] == "succeeded"}
    return {name: (out / name / "mask.tif").stat().st_mtime_ns for name in done}


def test_sigkill_at_random_moments_then_the_same_command(tmp_path, em_crops, expected_masks):
    folder = tmp_path / "in"
    for i, crop in enumerate(em_crops):
        write_em(folder / f"em{i}.tif", crop)
    clean = tmp_path / "clean"
    began = time.monotonic()
    assert subprocess.run(command(folder, clean), capture_output=True).returncode == 0
    seconds = time.monotonic() - began
    out, rng, kept = tmp_path / "out", random.Random(30), {}
    for _ in range(3):
        process = subprocess.Popen(command(folder, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, seconds))
        process.send_signal(signal.SIGKILL)
        process.wait()
        now = finished(out)
        assert all(now[name] == mtime for name, mtime in kept.items())  # nothing finished was redone
        kept = now
    result = subprocess.run(command(folder, out), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert all(finished(out)[name] == mtime for name, mtime in kept.items())
    succeeded = [r["name"] for r in manifest(out) if r["status"] == "succeeded"]
    assert sorted(succeeded) == sorted(set(succeeded)) == [f"em{i}" for i in range(len(em_crops))]  # each once
    for i in range(len(em_crops)):
        mask = read(out / f"em{i}" / "mask.tif")
        np.testing.assert_array_equal(mask, read(clean / f"em{i}" / "mask.tif"))
        np.testing.assert_array_equal(mask, expected_masks[i])
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())  # no .partial left


def test_ctrl_c_stops_cleanly(tmp_path, em_crops):
    folder = tmp_path / "in"
    for i, crop in enumerate(em_crops):
        write_em(folder / f"em{i}.tif", crop)
    out = tmp_path / "out"
    process = subprocess.Popen(command(folder, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not finished(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: ")
    records = manifest(out)
    done = [r["name"] for r in records if r["status"] == "succeeded"]
    stopped = records[len(done) :]  # the input in flight; none where Ctrl-C came as one was being recorded
    assert [r["status"] for r in records] == ["succeeded"] * len(done) + ["interrupted"] * len(stopped)
    assert len(stopped) <= 1 and 1 <= len(done) < len(em_crops)
    for last in stopped:
        assert last["outputs"] == {} and "interrupted" in last["error"] and last["name"] not in done
        assert not (out / last["name"]).exists()
    assert all((out / name / "mask.tif").exists() for name in done) and not (out / ".partial").exists()
    result = run("segment", folder, "--out-dir", out, *FIXED)  # resumes: the interrupted input is done now
    assert result.exit_code == 0 and f"{len(em_crops) - len(done)} succeeded" in result.output, result.output


# Run in a process of its own: the signals these send must not reach the test session's process (its threads
# and its libraries' handlers are the earlier tests', not a user's).
RACE = """
import json, os, signal, sys
from pathlib import Path
from tileseg.cohorts.inputs import expand
from tileseg.cohorts.manifest import Manifest
from tileseg.cohorts.runner import CohortInterrupted, CohortRun, run_cohort
from tileseg.engine.options import SegmentOptions

folder, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
append = Manifest.append

def append_then_ctrl_c(self, record):
    append(self, record)
    if record["status"] == "succeeded":
        os.kill(os.getpid(), signal.SIGINT)

Manifest.append = append_then_ctrl_c
options = SegmentOptions(tile=64, batch=2, precision="fp32", runtime="torch", compile="off")
try:
    run_cohort(CohortRun("unet-em", out, options), expand([str(folder)]), devices=["cpu"] * workers or None)
except CohortInterrupted as stop:
    print(json.dumps(stop.summary.counts))
"""

HELD = """
import os, signal, time
from tileseg.cohorts.attempt import uninterrupted

steps = []
try:
    with uninterrupted():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # a handler would have run by now
        steps.append("the block ended")
except KeyboardInterrupt:
    steps.append("interrupted after it")
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
print(" / ".join(steps))
"""


def python(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("workers", [0, 2])
def test_ctrl_c_while_a_finished_input_is_recorded(tmp_path, em_crops, workers):
    """The race of a Ctrl-C that comes while a finished input's line is being written (the moment a watcher
    sees it): that input stays recorded ``succeeded`` with its outputs in place, never ``interrupted``."""
    folder, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        write_em(folder / f"em{i}.tif", em_crops[i])
    done_ = python(RACE, folder, out, workers)
    assert done_.returncode == 0, done_.stderr
    counts = json.loads(done_.stdout.strip().splitlines()[-1])  # the run stopped, CohortInterrupted raised
    records = manifest(out)
    done = [r["name"] for r in records if r["status"] == "succeeded"]
    assert len(done) == 1 and counts["succeeded"] == 1
    assert all(r["name"] not in done for r in records if r["status"] != "succeeded")  # recorded once
    assert (out / done[0] / "mask.tif").exists()
    left = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert left == {done[0], "manifest.jsonl"}  # no output of an input recorded interrupted
    assert not any((out / ".partial").glob("*"))


def test_a_signal_held_by_uninterrupted_takes_effect_after_the_block():
    held = python(HELD)
    assert held.returncode == 0, held.stderr
    assert held.stdout.strip() == "the block ended / interrupted after it"


def test_an_s3_prefix(tmp_path, s3, em_crops, expected_masks):
    bucket = s3.bucket()
    for i in range(3):
        source = write_em(tmp_path / f"em{i}.tif", em_crops[i])
        s3.client().upload_file(str(source), bucket, f"scenes/day1/em{i}.tif")
    s3.client().put_object(Bucket=bucket, Key="scenes/day1/notes.txt", Body=b"not a raster")
    out = tmp_path / "out"
    result = run("segment", f"s3://{bucket}/scenes/day1/", "--out-dir", out, *FIXED)
    assert result.exit_code == 0, result.output
    records = manifest(out)
    assert [r["input"] for r in records] == [f"s3://{bucket}/scenes/day1/em{i}.tif" for i in range(3)]
    for i in range(3):
        np.testing.assert_array_equal(read(out / f"em{i}" / "mask.tif"), expected_masks[i])
    result = run("segment", f"s3://{bucket}/nothing/", "--out-dir", tmp_path / "none", *FIXED)
    assert result.exit_code == 1 and "no raster under this prefix" in result.output
    assert not (tmp_path / "none").exists()
