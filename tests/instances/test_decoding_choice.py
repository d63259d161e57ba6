"""The card's instance decoding, chosen on training images (:mod:`tileseg.training.decoding`)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
from click.testing import CliRunner
from scipy import ndimage

from tileseg import models
from tileseg.cli.train import train as train_command
from tileseg.models.spec import InstanceSpec
from tileseg.training.decoding import DISTANCES, ERODES, MARGIN, MIN_AREAS, best_decoding, decoding_grid
from tileseg.training.nuclei import CORE, NUCLEI_INSTANCES, core_and_contour

CLASS_INDICES = np.arange(3)


def _with_specks(labels: np.ndarray, side: int) -> np.ndarray:
    """The classes of ``labels`` with ``side x side`` core specks (no true object) far from every nucleus."""
    classes = core_and_contour(labels)
    far = ndimage.distance_transform_edt(labels == 0) > side + 4
    placed = 0
    for y in range(side, labels.shape[0] - 2 * side, 4 * side):
        for x in range(side, labels.shape[1] - 2 * side, 4 * side):
            if far[y : y + side, x : x + side].all():
                classes[y : y + side, x : x + side] = CORE
                placed += 1
    assert placed >= 5  # enough false objects to matter
    return classes


def test_the_grid_drops_false_specks_that_the_proposal_keeps(real_nuclei):
    labels = real_nuclei[2][2]
    smallest = int(np.bincount(labels.ravel())[1:].min())
    assert smallest > 9  # the dense image's nuclei are all larger than the specks
    keeps_specks = dataclasses.replace(NUCLEI_INSTANCES, min_area=8)
    grid = decoding_grid([_with_specks(labels, 3)], [labels], keeps_specks, CLASS_INDICES)
    points = {(e, e + d, m) for e in ERODES for d in DISTANCES for m in MIN_AREAS}
    assert {(p["erode"], p["distance"], p["min_area"]) for p in grid} == points
    by_point = {(p["erode"], p["distance"], p["min_area"]): p for p in grid}
    chosen = best_decoding(grid, keeps_specks)
    assert chosen.min_area > 9 and chosen.min_area <= smallest  # specks (9 px) gone, every nucleus kept
    mine = by_point[(chosen.erode, chosen.distance, chosen.min_area)]
    assert mine["ap50"] == max(p["ap50"] for p in grid)
    assert mine["ap50"] >= by_point[(0, 2, 8)]["ap50"] + MARGIN
    assert (chosen.seed, chosen.grow, chosen.decoding) == (NUCLEI_INSTANCES.seed, NUCLEI_INSTANCES.grow, "seeds")
    # the card's own proposal (min_area 16) already drops them: nothing beats it, it stays
    assert best_decoding(decoding_grid([_with_specks(labels, 3)], [labels], NUCLEI_INSTANCES, CLASS_INDICES),
                         NUCLEI_INSTANCES) == NUCLEI_INSTANCES  # fmt: skip


def test_the_proposal_stays_unless_beaten_by_the_margin_then_the_dsb_score_breaks_ties():
    proposal = InstanceSpec(seed=1, grow=(1, 2), distance=2, min_area=16)
    grid = [
        {"distance": 1, "min_area": 8, "ap50": 0.805, "dsb_score": 0.6},
        {"distance": 2, "min_area": 16, "ap50": 0.8, "dsb_score": 0.5},
        {"distance": 3, "min_area": 24, "ap50": 0.805, "dsb_score": 0.5},
    ]
    assert best_decoding(grid, proposal) == proposal  # half the margin: noise
    grid[0]["ap50"] = grid[2]["ap50"] = 0.8 + MARGIN
    assert best_decoding(grid, proposal) == dataclasses.replace(proposal, distance=1, min_area=8)
    grid[2]["dsb_score"] = 0.7
    assert best_decoding(grid, proposal) == dataclasses.replace(proposal, distance=3, min_area=24)
    grid.append({"erode": 1, "distance": 3, "min_area": 16, "ap50": 0.9, "dsb_score": 0.1})  # grids with erosion
    assert best_decoding(grid, proposal) == dataclasses.replace(proposal, erode=1, distance=3, min_area=16)


def test_a_trained_instance_model_carries_the_decoding_its_grid_chose(nuclei_dir, tmp_path):
    """``tileseg train`` on DSB nuclei (a few images): the card's decoding is the best point of the grid it
    records, measured on training images only."""
    data = tmp_path / "dsb"
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True)
    meta = json.loads((nuclei_dir / "meta.json").read_text())
    names = [n for n in sorted(meta) if meta[n]["shape"][:2] == [256, 256]]
    chosen = [n for n in names if n[0] in "012"][:2] + [n for n in names if n[0] not in "012"][:3]
    for name in chosen:
        for sub in ("images", "labels"):
            shutil.copy(nuclei_dir / sub / f"{name}.png", data / sub / f"{name}.png")
    (data / "meta.json").write_text(json.dumps({n: meta[n] for n in chosen}))
    out = tmp_path / "unet-nuclei-tiny"
    args = ["--arch", "unet", "--param", "base=4", "--param", "depth=2", "--param", "padding=same"]
    args += ["--data", str(data), "--dataset", "dsb2018", "--out", str(out), "--crop", "64", "--batch", "2"]
    args += ["--steps", "3", "--threads", "1", "--no-progress"]
    result = CliRunner().invoke(train_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = models.read_card(out.with_suffix(".json"))
    record = card["metrics"]["instances"]["decoding_choice"]
    assert record["chosen_on"].startswith("3 training images") and len(record["grid"]) == 40
    spec = models.load(out.with_suffix(".safetensors")).spec
    assert spec.instances == best_decoding(record["grid"], NUCLEI_INSTANCES)
    assert card["metrics"]["instances"]["decoding"]["min_area"] == spec.instances.min_area
    assert card["metrics"]["instances"]["overall"]["images"] == 2  # validation, never the choice's images


def test_the_shipped_nuclei_model_decodes_as_its_recorded_grid_chose():
    card = models.read_card("unet-nuclei")
    record = card["metrics"]["instances"]["decoding_choice"]
    spec = models.card_spec("unet-nuclei")
    assert record["chosen_on"].startswith("160 training images") and len(record["grid"]) == 40
    assert spec.instances == best_decoding(record["grid"], NUCLEI_INSTANCES)
