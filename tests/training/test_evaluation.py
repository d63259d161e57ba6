"""Validation runs through the serving engine: the tiles it predicts are the tiles ``segment()`` predicts, and a
shipped card's metrics are what ``segment()`` serves on the card's own validation images."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from tests.conftest import REPO, write_raster
from tileseg import models
from tileseg.engine import SegmentOptions, segment
from tileseg.engine.errors import TileGeometryError
from tileseg.models.spec import ClassInfo, Geometry, InputSpec, ModelSpec
from tileseg.training import data, sources
from tileseg.training.data import Sample
from tileseg.training.evaluation import evaluate
from tileseg.training.scores import confusion_matrix, mean_iou

CLASSES = (ClassInfo(0, "a", "#000000"), ClassInfo(1, "b", "#ffffff"))
CONV = Geometry(halo=8, multiple=16, default_tile=64)
VIT = Geometry(halo=32, multiple=16, default_tile=192, equivariant=False, blend="gaussian")


def _spec(geometry: Geometry) -> ModelSpec:
    return ModelSpec(
        name="test", arch="test", input=InputSpec(bands=1, mean=(0.5,), std=(0.2,)), classes=CLASSES, geometry=geometry
    )


class Record(torch.nn.Module):
    """Says class 1 everywhere, and records the shape of every batch it is given."""

    def __init__(self, geometry: Geometry) -> None:
        super().__init__()
        self.spec = _spec(geometry)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the engine finds the device from the parameters
        self.batches: list[tuple[int, ...]] = []

    def forward(self, x):
        self.batches.append(tuple(x.shape))
        shrink = self.spec.geometry.shrink
        out = torch.zeros(x.shape[0], 2, x.shape[2] - 2 * shrink, x.shape[3] - 2 * shrink)
        out[:, 1] = 1
        return out


def _sample(height: int, width: int) -> Sample:
    image = np.random.default_rng(0).integers(0, 256, (1, height, width), dtype=np.uint8)
    return Sample("x", image, np.zeros((height, width), dtype=np.uint8))


def test_a_valid_convolution_net_covers_the_whole_image():
    net = Record(Geometry(halo=3, multiple=4, offset=2, shrink=3))  # loses 3 pixels a side
    found = evaluate(net, [_sample(37, 23)], tile=16)
    assert found.masks[0].shape == (37, 23) and (found.masks[0] == 1).all()
    assert found.confusion.tolist() == [[0, 37 * 23], [0, 0]]
    assert {s.core for s in found.settings} == {16}


@pytest.mark.parametrize("geometry", [CONV, VIT], ids=["convolutional", "transformer"])
@pytest.mark.parametrize("tile", [None, 300])
def test_validation_tiles_as_segment_does(tmp_path, geometry, tile, monkeypatch):
    """The same windows, in the same batches: the served defaults (a convolutional net's default tile evened
    out over the image; a transformer's whole default window, blended), or a given tile rounded to the stride.
    The tuner of the served run is held at the card's tile and batch 4, which is what validation runs (an exact
    network's mask does not depend on the tile the tuner would choose; this test is about the tiling)."""
    from tileseg.engine import pipeline
    from tileseg.engine.runtime.choice import Choice
    from tileseg.engine.runtime.runtimes import BASELINE

    def card_choice(model, device, options, run_pixels, width=0, probabilities=False, object_bytes=0):
        core = options.tile or model.spec.geometry.default_tile
        return Choice(BASELINE, core, options.batch or 4, "held for the test")

    monkeypatch.setattr(pipeline, "choose_runtime", card_choice)
    sample = _sample(100, 70)
    evaluated, served = Record(geometry), Record(geometry)
    found = evaluate(evaluated, [sample], tile=tile)
    path = write_raster(tmp_path / "image.tif", sample.image)
    core = None if tile is None else 304
    segment(served, path, tmp_path / "mask.tif", SegmentOptions(tile=core, precision="fp32", compile="off"))
    assert evaluated.batches == served.batches
    assert found.settings[0].blend == geometry.blend and (tile is None or found.settings[0].core == 304)
    with rasterio.open(tmp_path / "mask.tif") as dst:
        np.testing.assert_array_equal(dst.read(1), found.masks[0])


def test_a_tile_past_the_engine_range_is_refused():
    with pytest.raises(TileGeometryError):
        evaluate(Record(CONV), [_sample(8, 8)], tile=100_000)


def test_the_card_metrics_of_unet_em_are_what_segment_serves(tmp_path, data_dir):
    """The training code's evaluation of the shipped unet-em over its card's validation images, against
    ``segment()`` on the same files: the same mask pixel for pixel, so the same confusion matrix, and the
    card's mIoU (measured at training time) within 0.002."""
    torch.set_num_threads(2)
    model = models.load(REPO / "weights" / "unet-em.safetensors")
    card = model.card["data"]
    source = sources.open_source(card["dataset"], data_dir / "isbi2012")
    pairs = [p for p in source.val if p.name in card["val_images"]]
    assert [p.name for p in pairs] == card["val_images"]
    samples = [data.load_pair(p, source.lut) for p in pairs]
    found = evaluate(model, samples)
    channel = np.zeros(256, dtype=np.uint8)
    channel[[c.index for c in model.spec.classes]] = np.arange(model.spec.num_classes)
    served = np.zeros_like(found.confusion)
    for pair, sample, mask in zip(pairs, samples, found.masks):
        out = tmp_path / f"{pair.name}.tif"
        segment(model, pair.image, out, SegmentOptions(precision="fp32", compile="off"))
        with rasterio.open(out) as dst:
            written = channel[dst.read(1)]
        np.testing.assert_array_equal(written, mask)
        served += confusion_matrix(written, sample.label, model.spec.num_classes)
    np.testing.assert_array_equal(found.confusion, served)
    miou = mean_iou(found.confusion)
    assert miou == pytest.approx(model.card["metrics"]["miou"], abs=0.002)
    print(f"unet-em: confusion {found.confusion.tolist()}, mIoU {miou:.6f} (card {model.card['metrics']['miou']})")
