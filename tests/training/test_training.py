"""Tests of tileseg.training and `tileseg train`, on the real data sets in ../shared/data.

The data folder comes from TILESEG_SHARED_DATA (default: the repository's ../shared/data). Missing data fails
the tests rather than skipping them: a test that cannot run has not passed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from scipy import ndimage

from tileseg import models
from tileseg.cli.options import parse_params
from tileseg.cli.train import train as train_command
from tileseg.engine.errors import OptionsError
from tileseg.models.crop import centre_crop
from tileseg.models.spec import reflect_indices
from tileseg.training import augment, class_weights, data, network, optimizer, scores
from tileseg.training import sampler as sampler_module
from tileseg.training.data import IGNORE_INDEX, TrainingDataError
from tileseg.training.state import flatten_optimizer, unflatten_optimizer

REPO = Path(models.__file__).parent.parent
DATA = Path(os.environ.get("TILESEG_SHARED_DATA", REPO.parent / "shared" / "data"))
ISBI = DATA / "isbi2012"
DUBAI = DATA / "dubai_aerial"
TINY_UNET = ["--arch", "unet", "--param", "base=4", "--param", "depth=2"]


@pytest.fixture(scope="module")
def isbi_dir() -> Path:
    if not (ISBI / "train" / "images").is_dir():
        pytest.fail(f"ISBI 2012 data not found at {ISBI}; set TILESEG_SHARED_DATA")
    return ISBI


@pytest.fixture(scope="module")
def dubai_dir() -> Path:
    if not (DUBAI / "tile1").is_dir():
        pytest.fail(f"Dubai aerial data not found at {DUBAI}; set TILESEG_SHARED_DATA")
    return DUBAI


# --- scores --------------------------------------------------------------------------------------------


def test_confusion_matrix_counts_labelled_pixels_only():
    target = np.array([[0, 0, 1], [1, 2, IGNORE_INDEX]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = scores.confusion_matrix(pred, target, 3)
    # rows: truth, columns: prediction; the ignored pixel (predicted 2) is not counted
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_iou_miou_pixel_error_known_answers():
    cm = np.array([[5, 1, 0], [2, 2, 0], [0, 0, 0]])  # class 2 neither present nor predicted
    iou = scores.per_class_iou(cm)
    assert iou[0] == pytest.approx(5 / 8)  # TP 5, FN 1, FP 2
    assert iou[1] == pytest.approx(2 / 5)  # TP 2, FN 2, FP 1
    assert np.isnan(iou[2])
    assert scores.mean_iou(cm) == pytest.approx((5 / 8 + 2 / 5) / 2)
    assert scores.pixel_error(cm) == pytest.approx(3 / 10)
    assert scores.majority_baseline_pixel_error(cm) == pytest.approx(4 / 10)
    # always class 0: IoU 6/10 for it, 0 for class 1, none for the absent class 2
    assert scores.majority_baseline_miou(cm) == pytest.approx((6 / 10 + 0) / 2)
    summary = scores.summarize(cm, ["a", "b", "c"])
    assert summary["per_class_iou"]["c"] is None and summary["labelled_pixels"] == 10


def test_confusion_matrix_refuses_out_of_range_and_shape():
    with pytest.raises(ValueError):
        scores.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError):
        scores.confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)


# --- data ----------------------------------------------------------------------------------------------


def test_normalize_is_scale_then_standardise():
    image = np.array([[[0, 128], [255, 51]], [[10, 20], [30, 40]]], dtype=np.uint8)
    mean, std = (0.5, 0.1), (0.25, 0.05)
    out = data.normalize(image, mean, std)
    expected = (image / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(TrainingDataError):
        data.normalize(image.astype(np.int16), mean, std)


def test_isbi_split_and_label_mapping(isbi_dir):
    source = data.isbi2012(isbi_dir)
    assert [p.name for p in source.train] == [str(i) for i in range(25)]
    assert [p.name for p in source.val] == [str(i) for i in range(25, 30)]
    assert all(
        p.image.parent.name == "images" and p.mask.parent.name == "labels" and p.image.name == p.mask.name
        for p in source.train + source.val
    )
    assert [(c.index, c.name) for c in source.classes] == [(0, "membrane"), (1, "cell")]
    sample = data.load_pair(source.val[0], source.lut)
    raw = np.asarray(Image.open(source.val[0].mask))
    assert set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(sample.label, raw // 255)
    assert sample.image.shape == (1, 512, 512) and sample.image.dtype == np.uint8
    assert "Cardona" in source.license


def test_dubai_split_pairing_and_mapping(dubai_dir):
    source = data.dubai(dubai_dir)
    assert len(source.train) == 63 and len(source.val) == 9
    assert {p.name.split("/")[0] for p in source.train} == {f"tile{i}" for i in range(1, 8)}
    assert {p.name.split("/")[0] for p in source.val} == {"tile8"}
    for pair in source.train + source.val:
        assert pair.image.stem == pair.mask.stem and pair.image.parent.parent == pair.mask.parent.parent
    assert [(c.index, c.name) for c in source.classes][0] == (1, "building") and len(source.classes) == 5
    assert "CC0" in source.license
    small = next(p for p in source.train if p.name == "tile1/image_part_001")  # holds all six mask values
    sample = data.load_pair(small, source.lut)
    raw = np.asarray(Image.open(small.mask))
    assert sample.image.shape == (3, 644, 797)
    np.testing.assert_array_equal(sample.label[raw == 0], IGNORE_INDEX)
    np.testing.assert_array_equal(sample.label[raw > 0], raw[raw > 0] - 1)  # channel c is class index c + 1


def _write_pair(
    root: Path,
    stem: str,
    size: tuple[int, int],
    mask_size: tuple[int, int] | None = None,
    values: tuple[int, ...] = (0, 1),
) -> None:
    rng = np.random.default_rng(len(stem))
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
    mh, mw = (mask_size or size)[::-1]
    Image.fromarray(rng.choice(np.array(values, dtype=np.uint8), (mh, mw))).save(root / "masks" / f"{stem}.png")


def test_folder_adapter_classes_split_and_checks(tmp_path):
    for i in range(5):
        _write_pair(tmp_path / "ok", f"a{i}", (20, 16), values=(0, 2, 255))
    source = data.folder(tmp_path / "ok", val_fraction=0.2, class_names=["ground", "tree"])
    assert [(c.index, c.name) for c in source.classes] == [(0, "ground"), (2, "tree")]
    assert [p.name for p in source.val] == ["a4"] and len(source.train) == 4
    sample = source.load().val[0]
    assert set(np.unique(sample.label)) <= {0, 1, IGNORE_INDEX}

    _write_pair(tmp_path / "lonely", "a", (8, 8))
    _write_pair(tmp_path / "lonely", "b", (8, 8))
    (tmp_path / "lonely" / "masks" / "b.png").unlink()
    with pytest.raises(TrainingDataError, match="b.png has no mask"):
        data.folder(tmp_path / "lonely")

    _write_pair(tmp_path / "sizes", "a", (8, 8))
    _write_pair(tmp_path / "sizes", "b", (8, 8), mask_size=(8, 9))
    with pytest.raises(TrainingDataError, match="8x9"):
        data.folder(tmp_path / "sizes")


# --- augmentation --------------------------------------------------------------------------------------


def test_reflect_indices_without_repeating_the_edge():
    assert reflect_indices(-3, 10, 5).tolist() == [3, 2, 1, 0, 1, 2, 3, 4, 3, 2]
    assert reflect_indices(0, 3, 1).tolist() == [0, 0, 0]
    np.testing.assert_array_equal(augment.mirror_window(np.arange(5)[None], 0, -2, 1, 4), [[2, 1, 0, 1]])


@pytest.mark.parametrize("size", [(40, 57), (9, 7)])  # larger than the crop, and smaller (mirrored all round)
def test_crops_flips_and_rotations_keep_image_and_mask_aligned(size):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (2, *size), dtype=np.uint8)
    label = (image[0] // 37).astype(np.uint8)  # the label is a function of the image pixel under it
    weights = image[1].astype(np.float32)
    output, shrink = 12, 5
    seen = set()
    for _ in range(40):
        img, lab, wts = augment.sample_crop(rng, image, label, output, shrink, augment.Augment(flips=True), weights)
        assert img.shape == (2, 22, 22) and lab.shape == (12, 12) and wts.shape == (12, 12)
        centre = centre_crop(img, output, output)
        np.testing.assert_array_equal(lab, centre[0] // 37)
        np.testing.assert_array_equal(wts, centre[1])
        seen.add(img.tobytes())
    assert len(seen) > 30  # the crops are random


def test_dihedral_covers_the_eight_symmetries():
    a = np.arange(9).reshape(3, 3)
    results = {augment.dihedral(a, k, f).tobytes() for k in range(4) for f in (False, True)}
    assert len(results) == 8
    np.testing.assert_array_equal(augment.dihedral(a, 1, False), np.rot90(a))


def test_elastic_deformation_moves_weights_with_the_image():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (1, 50, 50), dtype=np.uint8)
    weights = image[0].astype(np.float32)
    label = np.zeros((50, 50), dtype=np.uint8)
    img, lab, wts = augment.sample_crop(rng, image, label, 20, 4, augment.Augment(flips=False, elastic=True), weights)
    np.testing.assert_allclose(wts, centre_crop(img[0], 20, 20), atol=1e-4)
    flat = augment.elastic_field(rng, 16, 0.0, 3)  # no displacement: the identity
    out = augment.warp(image[:, :16, :16], flat, "nearest")
    np.testing.assert_array_equal(out, image[:, :16, :16])


def test_colour_jitter_changes_the_image_only():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (3, 30, 30), dtype=np.uint8)
    label = (image[0] > 128).astype(np.uint8)
    rng = np.random.default_rng(6)
    crops = [
        augment.sample_crop(rng, image, label, 30, 0, augment.Augment(flips=False, colour=True)) for _ in range(60)
    ]
    for img, lab, _ in crops:
        assert img.dtype == np.float32 and img.shape == (3, 30, 30) and 0 <= img.min() <= img.max() <= 255
        np.testing.assert_array_equal(lab, label)  # no move: the labels are the image's own
    assert all(not np.allclose(img, image) for img, _, _ in crops)
    # some crops inverted (bright where the image is dark), some grey (three equal bands)
    correlations = [np.corrcoef(img.mean(axis=0).ravel(), image.mean(axis=0).ravel())[0, 1] for img, _, _ in crops]
    assert min(correlations) < -0.5 and max(correlations) > 0.5
    assert any(np.array_equal(img[0], img[1]) and np.array_equal(img[1], img[2]) for img, _, _ in crops)
    again = np.random.default_rng(6)
    first = augment.sample_crop(again, image, label, 30, 0, augment.Augment(flips=False, colour=True))[0]
    np.testing.assert_array_equal(first, crops[0][0])  # reproducible from the seed
    assert any("intensity and colour" in name for name in augment.Augment(colour=True).names())


def test_four_connected_objects_and_border_weights():
    mask = np.zeros((12, 20), dtype=bool)
    mask[2:10, 2:8] = True  # object A
    mask[2:10, 10:16] = True  # object B, two pixels right of A
    mask[11, 19] = True  # object C, a single pixel
    comps, _ = ndimage.label(mask)  # the objects border_weights separates
    assert comps.max() == 3 and len({comps[3, 3], comps[3, 12], comps[11, 19]}) == 3
    label = mask.astype(np.uint8)
    w = augment.border_weights(label, instance_channel=1, w0=10, sigma=5)
    assert (w[mask] == 0).all()
    # pixel (5, 8): 1 from A, 2 from B -> 10 * exp(-9 / 50)
    assert w[5, 8] == pytest.approx(10 * np.exp(-9 / 50), rel=1e-4)
    assert w[5, 8] > w[0, 18] > 0


def test_crops_draw_images_by_area_or_each_image_equally(isbi_dir):
    source = data.isbi2012(isbi_dir)
    big = data.Sample("big", np.zeros((1, 48, 48), np.uint8), np.zeros((48, 48), np.uint8))
    small = data.Sample("small", np.zeros((1, 12, 12), np.uint8), np.ones((12, 12), np.uint8))
    dataset = data.Dataset(source=source, train=[big, small], val=[], bands=1)
    for by, small_share in (("area", 144 / (144 + 2304)), ("image", 0.5)):
        sampler = sampler_module.Sampler(dataset, 8, 0, augment.Augment(flips=False), 0, 0, None, by=by)
        drawn = [float(lab[0, 0]) for step in range(100) for lab in sampler.batch(step, 8)[1]]
        assert abs(np.mean(drawn) - small_share) < 0.05, by  # 800 draws: three standard errors at most
    with pytest.raises(ValueError, match="by must be"):
        sampler_module.Sampler(dataset, 8, 0, augment.Augment(), 0, 0, None, by="pixel")


# --- loop pieces ---------------------------------------------------------------------------------------


def test_small_pieces_of_the_loop():
    assert parse_params(["base=64"]) == {"base": 64}
    assert parse_params(["batch_norm=False"]) == {"batch_norm": False}
    assert parse_params(["padding=same"]) == {"padding": "same"}
    assert parse_params(["prune=none"]) == {"prune": None}
    given = [" lr = 1e-3", "channels=[64,32]", 'name="7"']
    assert parse_params(given) == {"lr": 1e-3, "channels": [64, 32], "name": "7"}
    with pytest.raises(OptionsError):
        parse_params(["base"])
    geometry = models.Geometry(halo=92, multiple=16, offset=4, shrink=92)
    assert network.nearest_valid_crop(geometry, 128) == 132 and network.nearest_valid_crop(geometry, 120) == 116
    assert network.nearest_valid_crop(geometry, 1) == 20
    assert optimizer.lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert optimizer.lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert optimizer.lr_factor(99, 100, 10) < 0.01
    labels = [np.array([[0, 0, 0, 1]], dtype=np.uint8), np.array([[0, 1, IGNORE_INDEX, IGNORE_INDEX]], dtype=np.uint8)]
    weights = class_weights.median_frequency_weights(labels, 2)  # f0 = 4/6, f1 = 2/6, median 1/2
    np.testing.assert_allclose(weights, [0.75, 1.5])


def test_optimizer_state_round_trips_without_pickle():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors, index = flatten_optimizer(opt.state_dict())
    json.dumps(index)  # the index is plain JSON
    back = unflatten_optimizer(tensors, json.loads(json.dumps(index)))
    fresh = torch.optim.AdamW(net.parameters())
    fresh.load_state_dict(back)
    for pid, entries in opt.state_dict()["state"].items():
        for name, value in entries.items():
            assert torch.equal(fresh.state_dict()["state"][pid][name], value)


# --- `tileseg train` end to end ------------------------------------------------------------------------


def _run(args: list[str], expect: int = 0):
    result = CliRunner().invoke(train_command, args, catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result


def _isbi_args(isbi_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        *TINY_UNET,
        "--data",
        str(isbi_dir),
        "--dataset",
        "isbi2012",
        "--out",
        str(out),
        "--crop",
        "34",
        "--batch",
        "2",
        "--steps",
        "4",
        "--threads",
        "1",
        "--no-progress",
        "--eval-tile",
        "512",
        *extra,
    ]


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out.with_suffix(".safetensors")))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, isbi_dir) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("runs") / "unet-tiny"
    result = _run(_isbi_args(isbi_dir, out, "--seed", "7"))
    return out, result.output


def test_train_writes_a_loadable_checkpoint_with_metrics(straight_run):
    out, output = straight_run
    assert "using the nearest valid output crop 36" in output  # 34 is no valid output for this U-Net
    net = models.load(out.with_suffix(".safetensors"))
    assert net.spec.name == "unet-tiny" and net.spec.arch == "unet"
    assert [c.name for c in net.spec.classes] == ["membrane", "cell"]
    assert net.spec.geometry == net.geometry() and net.spec.geometry.shrink == 20
    assert net.spec.precision in ("bf16", "fp32")
    card = models.read_card(out.with_suffix(".json"))
    m = card["metrics"]
    assert set(m["per_class_iou"]) == {"membrane", "cell"}
    assert 0 <= m["pixel_error"] <= 1 and 0 <= m["miou"] <= 1 and 0 <= m["bf16_agreement"] <= 1
    assert "tileseg.engine.predict_strips" in m["evaluation"] and "--tile 512" in m["evaluation"]  # --eval-tile
    assert m["majority_baseline_pixel_error"] == pytest.approx(0.2, abs=0.03)  # ISBI: about 20 % membrane
    assert card["training"]["steps"] == 4 and card["training"]["crop"] == 36 and card["training"]["seed"] == 7
    assert card["training"]["input_crop"] == 76 and "Cardona" in card["license"]
    assert len(card["created"]) == 10
    with torch.inference_mode():
        logits = net(torch.zeros(1, 1, 76, 76).to(memory_format=torch.channels_last))
    assert logits.shape == (1, 2, 36, 36)


def test_same_seed_same_weights_other_seed_other_weights(straight_run, isbi_dir, tmp_path):
    out, _ = straight_run
    _run(_isbi_args(isbi_dir, tmp_path / "again", "--seed", "7"))
    _run(_isbi_args(isbi_dir, tmp_path / "other", "--seed", "8"))
    first, again, other = _tensors(out), _tensors(tmp_path / "again"), _tensors(tmp_path / "other")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_resume_continues_from_the_saved_step(straight_run, isbi_dir, tmp_path):
    out, _ = straight_run
    split = tmp_path / "split"
    result = _run(_isbi_args(isbi_dir, split, "--seed", "7", "--session-steps", "2"))
    assert "stopped at step 2 of 4" in result.output
    assert not split.with_suffix(".json").exists()
    state = json.loads((tmp_path / "split.train" / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["seed"] == 7 and state["loss_ema"] > 0
    # a saved run is not overwritten by accident
    result = CliRunner().invoke(train_command, _isbi_args(isbi_dir, split, "--seed", "7"))
    assert result.exit_code != 0 and "--resume" in result.output
    # nor continued with settings that define another run
    result = CliRunner().invoke(train_command, ["--out", str(split), "--resume", "--lr", "0.5"])
    assert result.exit_code != 0 and "lr=0.5" in result.output
    # the second session needs only --out and --resume
    result = _run(["--out", str(split), "--resume", "--no-progress"])
    assert "resuming from step 2 of 4" in result.output
    card = models.read_card(split.with_suffix(".json"))
    assert card["training"]["steps"] == 4 and card["training"]["sessions"] == 2
    # the smoothed training loss goes on across sessions, as if the run had not stopped
    straight_loss = models.read_card(out.with_suffix(".json"))["metrics"]["final_training_loss"]
    assert card["metrics"]["final_training_loss"] == straight_loss
    # the crops of steps 3 and 4 come from (seed, rank, step): resuming changes nothing
    first, resumed = _tensors(out), _tensors(split)
    assert all(torch.equal(first[k], resumed[k]) for k in first)


def test_init_starts_from_given_weights(straight_run, isbi_dir, tmp_path):
    out, _ = straight_run
    start = out.with_suffix(".safetensors")
    args = _isbi_args(isbi_dir, tmp_path / "tuned", "--seed", "9", "--lr", "1e-12", "--steps", "2")
    result = _run([*args, "--init", str(start), "--colour", "--sample-by", "image"])
    assert f"starting from the weights in {start}" in result.output
    before, after = _tensors(out), _tensors(tmp_path / "tuned")
    learned = [k for k in before if "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(before[k], after[k]) for k in learned)  # a learning rate of 1e-12 moves nothing
    card = models.read_card((tmp_path / "tuned").with_suffix(".json"))
    first = models.read_card(out.with_suffix(".json"))["training"]
    assert card["training"]["initial_weights"] == {"weights": start.name, "steps": 4, "training": first}
    assert any("intensity and colour" in a for a in card["training"]["augmentations"])
    assert card["training"]["sampling"].startswith("every image equally")
    _run(_isbi_args(isbi_dir, tmp_path / "fresh", "--seed", "9", "--lr", "1e-12", "--steps", "2"))
    assert not all(torch.equal(before[k], _tensors(tmp_path / "fresh")[k]) for k in learned)
    # weights of another network are refused before any step
    wider = [a if a != "base=4" else "base=8" for a in _isbi_args(isbi_dir, tmp_path / "wider")]
    result = CliRunner().invoke(train_command, [*wider, "--init", str(start)])
    assert result.exit_code != 0 and "do not fit this network" in result.output
    assert not (tmp_path / "wider.safetensors").exists()


@pytest.mark.parametrize("native", [False, True])
def test_amp_on_a_cpu_without_bf16_in_hardware_trains_in_fp32(isbi_dir, tmp_path, monkeypatch, native):
    from tileseg.training import config as config_module

    monkeypatch.setattr(config_module, "native_bf16", lambda device: native)  # the two kinds of CPU
    cpu = torch.device("cpu")
    settings = config_module.TrainConfig("unet", str(isbi_dir), "isbi2012", str(tmp_path / "x"), amp=True)
    assert settings.autocast_dtype(cpu) == (torch.bfloat16 if native else None)
    assert dataclasses.replace(settings, amp_dtype="bf16").autocast_dtype(cpu) == torch.bfloat16  # asked by name
    assert dataclasses.replace(settings, amp=False).autocast_dtype(cpu) is None
    out = tmp_path / "amp"
    result = _run(_isbi_args(isbi_dir, out, "--steps", "2", "--amp"))
    assert ("training in fp32" in result.output) is not native
    assert models.read_card(out.with_suffix(".json"))["training"]["amp"] == ("bfloat16" if native else None)


def test_unetpp_trains_with_deep_supervision(isbi_dir, tmp_path):
    out = tmp_path / "unetpp-tiny"
    _run(
        [
            "--arch",
            "unetpp",
            "--param",
            "base=4",
            "--param",
            "depth=2",
            "--data",
            str(isbi_dir),
            "--dataset",
            "isbi2012",
            "--out",
            str(out),
            "--crop",
            "32",
            "--batch",
            "2",
            "--steps",
            "2",
            "--threads",
            "1",
            "--no-progress",
            "--class-weights",
            "auto",
            "--eval-tile",
            "512",
        ]
    )
    card = models.read_card(out.with_suffix(".json"))
    assert card["training"]["deep_supervision"] is True and "deep-supervision" in card["training"]["loss"]
    assert len(card["training"]["class_weights"]) == 2
    assert models.load(out.with_suffix(".safetensors")).spec.arch == "unetpp"


def test_bad_settings_are_refused_with_a_message(isbi_dir, tmp_path):
    result = CliRunner().invoke(train_command, ["--out", str(tmp_path / "x"), "--dataset", "isbi2012"])
    assert result.exit_code != 0 and "--arch" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(train_command, _isbi_args(isbi_dir, tmp_path / "y", "--class-weights", "1,2,3"))
    assert result.exit_code != 0 and "2 non-negative numbers" in result.output


def test_two_process_gloo_run_writes_a_loadable_checkpoint(isbi_dir, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tileseg.cli.train",
        *_isbi_args(isbi_dir, out, "--steps", "2"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    card = models.read_card(out.with_suffix(".json"))
    assert card["training"]["processes"] == 2 and card["training"]["global_batch"] == 4
    assert models.load(out.with_suffix(".safetensors")).spec.name == "ddp"


def test_sigterm_stops_cleanly_and_saves_the_state(isbi_dir, tmp_path):
    out = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = _isbi_args(isbi_dir, out, "--steps", "100000", "--checkpoint-every", "100000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tileseg.cli.train", *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        # this line comes once the signal handlers are in place, just before the first step
        lines = iter(proc.stderr.readline, "")
        assert any("SIGTERM saves the state" in line for line in lines)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert "signal SIGTERM" in rest and "--resume" in rest
    state = json.loads((tmp_path / "stopped.train" / "state.json").read_text())
    assert 0 < state["step"] < 100000
    assert not out.with_suffix(".json").exists()
