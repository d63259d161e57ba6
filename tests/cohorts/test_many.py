"""``tileseg segment INPUT... --out-dir DIR``: every input's outputs equal its single run's; the manifest; a
failing input recorded while the run goes on (exit 1); resuming; --overwrite; --fail-fast; --workers; bad
INPUTs refused in one line with nothing written."""

from __future__ import annotations

import numpy as np
import pyogrio.raw

from tests.cohorts.conftest import FIXED, manifest, read, run, write_em


def test_a_folder_gives_each_input_its_single_run_outputs_and_a_manifest(tmp_path, em_folder, expected_masks):
    out = tmp_path / "out"
    result = run("segment", em_folder, "--out-dir", out, *FIXED, "--vectors", "gpkg", "--probabilities", "tif")
    assert result.exit_code == 0, result.output
    assert "4 succeeded, 0 failed" in result.output
    records = manifest(out)
    assert [r["name"] for r in records] == ["em0", "em1", "em2", "em3"]
    for i, record in enumerate(records):
        assert record["status"] == "succeeded" and record["input"] == str(em_folder / f"em{i}.tif")
        assert record["outputs"] == {"mask": f"em{i}/mask.tif", "probabilities": f"em{i}/probabilities.tif",
                                     "vectors": f"em{i}/vectors.gpkg"}  # fmt: skip
        assert record["pixels"] == 128 * 128 and record["runtime"] and record["seconds"] > 0
        assert len(record["options_hash"]) == 16 and record["at"] and "error" not in record
        np.testing.assert_array_equal(read(out / record["outputs"]["mask"]), expected_masks[i])
        assert read(out / record["outputs"]["probabilities"]).shape[0] == 2
        assert len(pyogrio.raw.read(out / record["outputs"]["vectors"])[2]) > 0
    assert sorted(p.name for p in out.iterdir()) == [".lock", "em0", "em1", "em2", "em3", "manifest.jsonl"]


def test_lists_globs_and_names_that_collide(tmp_path, em_crops, expected_masks):
    a = write_em(tmp_path / "a" / "scene.tif", em_crops[0])
    b = write_em(tmp_path / "b" / "scene.tif", em_crops[1])
    write_em(tmp_path / "c" / "deep" / "x.tif", em_crops[2])
    listing = tmp_path / "list.txt"
    listing.write_text(f"# the two scenes\n\n{a}\nb/scene.tif  # relative to the list\n")
    out = tmp_path / "out"
    result = run("segment", f"@{listing}", str(tmp_path / "c" / "**" / "*.tif"), "--recursive", "--out-dir", out,
                 *FIXED)  # fmt: skip
    assert result.exit_code == 0, result.output
    names = {r["input"]: r["name"] for r in manifest(out)}
    assert names[str(tmp_path / "c" / "deep" / "x.tif")] == "x"
    first, second = names[str(a)], names[str(b)]
    assert first != second and first.startswith("scene-") and second.startswith("scene-")
    np.testing.assert_array_equal(read(out / first / "mask.tif"), expected_masks[0])
    np.testing.assert_array_equal(read(out / second / "mask.tif"), expected_masks[1])
    again = run("segment", f"@{listing}", "--out-dir", tmp_path / "out2", *FIXED)  # same inputs, same names
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (tmp_path / "out2").iterdir() if p.is_dir()) == sorted([first, second])


def test_a_failing_input_is_recorded_the_run_goes_on_and_the_exit_status_is_one(tmp_path, em_folder, expected_masks):
    (em_folder / "em1.tif").write_bytes(b"II*\x00 not a whole TIFF")
    out = tmp_path / "out"
    result = run("segment", em_folder, "--out-dir", out, *FIXED)
    assert result.exit_code == 1, result.output
    assert "3 succeeded, 1 failed" in result.output
    records = {r["name"]: r for r in manifest(out)}
    assert records["em1"]["status"] == "failed" and records["em1"]["outputs"] == {}
    assert "\n" not in records["em1"]["error"] and records["em1"]["error"]
    assert not (out / "em1").exists()
    np.testing.assert_array_equal(read(out / "em3" / "mask.tif"), expected_masks[3])
    # --fail-fast: stops after the failing input; what comes after it is not attempted
    fast = tmp_path / "fast"
    result = run("segment", em_folder, "--out-dir", fast, *FIXED, "--fail-fast")
    assert result.exit_code == 1
    assert [(r["name"], r["status"]) for r in manifest(fast)] == [("em0", "succeeded"), ("em1", "failed")]


def test_the_same_command_resumes_and_overwrite_redoes(tmp_path, em_folder, expected_masks):
    out = tmp_path / "out"
    (em_folder / "em2.tif").rename(tmp_path / "em2.tif")  # not there in the first run
    assert run("segment", em_folder, "--out-dir", out, *FIXED).exit_code == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*/mask.tif")}
    (tmp_path / "em2.tif").rename(em_folder / "em2.tif")
    result = run("segment", em_folder, "--out-dir", out, *FIXED)
    assert result.exit_code == 0 and "1 succeeded, 0 failed, 3 skipped" in result.output, result.output
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*/mask.tif") if p.parent.name != "em2"} == stamps
    last = [(r["name"], r["status"]) for r in manifest(out)][-4:]  # the skips are recorded first
    assert last == [("em0", "skipped"), ("em1", "skipped"), ("em3", "skipped"), ("em2", "succeeded")]
    np.testing.assert_array_equal(read(out / "em2" / "mask.tif"), expected_masks[2])
    # other options: a different hash, so done again
    result = run("segment", em_folder, "--out-dir", out, *FIXED, "--cog")
    assert "4 succeeded" in result.output and len({r["options_hash"] for r in manifest(out)}) == 2
    # an output removed by hand: that input is done again
    (out / "em0" / "mask.tif").unlink()
    result = run("segment", em_folder, "--out-dir", out, *FIXED, "--cog")
    assert "1 succeeded, 0 failed, 3 skipped" in result.output, result.output
    result = run("segment", em_folder, "--out-dir", out, *FIXED, "--cog", "--overwrite")
    assert "4 succeeded, 0 failed in" in result.output
    np.testing.assert_array_equal(read(out / "em0" / "mask.tif"), expected_masks[0])


def test_workers_spread_inputs_over_processes(tmp_path, em_crops, expected_masks):
    folder = tmp_path / "in"
    for i in range(6):
        write_em(folder / f"em{i}.tif", em_crops[i])
    out = tmp_path / "out"
    result = run("segment", folder, "--out-dir", out, *FIXED, "--workers", "2")
    assert result.exit_code == 0, result.output
    records = manifest(out)
    assert sorted(r["name"] for r in records) == [f"em{i}" for i in range(6)]
    for i in range(6):
        np.testing.assert_array_equal(read(out / f"em{i}" / "mask.tif"), expected_masks[i])
    assert not (out / ".partial").exists()


def test_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path, em_folder):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    missing_list = tmp_path / "list.txt"
    missing_list.write_text(f"{em_folder / 'em0.tif'}\n{tmp_path / 'gone.tif'}\n")
    cases = [
        ([tmp_path / "empty"], "holds no raster or slide"),
        ([f"@{missing_list}"], "line 2"),
        ([f"@{tmp_path / 'no-list.txt'}"], "no such list file"),
        ([str(tmp_path / "nothing-*.tif")], "matches no raster"),
        ([tmp_path / "gone.tif"], "no such file or folder"),
    ]
    for inputs, words in cases:
        result = run("segment", *inputs, "--out-dir", out, *FIXED)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("error: ") and words in result.output and result.output.count("\n") == 1
        assert not out.exists()
    result = run("segment", em_folder, "--out-dir", out, *FIXED, "--vectors", "v.gpkg")
    assert result.exit_code == 2 and "names a format" in result.output and not out.exists()
    result = run("segment", em_folder, "--out-dir", out, "--model", "no-such-model")
    assert result.exit_code == 1 and not out.exists()
    result = run("segment", em_folder, "--recursive", *FIXED)
    assert result.exit_code == 2 and "--out-dir" in result.output


def test_the_single_form_is_unchanged(tmp_path, em_folder, expected_masks):
    result = run("segment", em_folder / "em0.tif", tmp_path / "m.tif", *FIXED)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read(tmp_path / "m.tif"), expected_masks[0])
    result = run("segment", em_folder / "em0.tif", *FIXED)
    assert result.exit_code == 2 and "INPUT OUTPUT" in result.output
