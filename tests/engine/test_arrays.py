"""An image in memory is predicted by segment()'s own tiling: exact for a convolutional network, with the
probabilities when asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import write_raster
from tests.engine.nets import checkpoint
from tests.engine.test_engine import reference_logits
from tileseg.engine import SegmentOptions
from tileseg.engine.arrays import predict_array
from tileseg.engine.runtime.runtimes import BASELINE


@pytest.mark.parametrize("arch,tile", [("test-pool", 8), ("test-valid", 16)])
def test_labels_and_probabilities_equal_the_whole_image_run(tmp_path, arch, tile):
    model = checkpoint(tmp_path, arch, bands=2, classes=3)
    image = np.random.default_rng(1).integers(0, 256, (2, 37, 53), dtype=np.uint8)
    expected = torch.softmax(torch.from_numpy(reference_logits(model, write_raster(tmp_path / "in.tif", image))), 0)
    found = predict_array(model, image, SegmentOptions(tile=tile, batch=3), probabilities=True)
    assert found.settings.core == tile and found.runtime == BASELINE
    assert found.probabilities is not None and found.probabilities.shape == (3, 37, 53)
    np.testing.assert_allclose(found.probabilities, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(found.labels, found.probabilities.argmax(axis=0))


def test_probabilities_only_when_asked_for(tmp_path):
    model = checkpoint(tmp_path, "test-pool", bands=1, classes=2)
    image = np.random.default_rng(2).integers(0, 256, (1, 20, 30), dtype=np.uint8)
    found = predict_array(model, image, SegmentOptions(tile=8))
    assert found.probabilities is None and found.labels.shape == (20, 30) and found.labels.dtype == np.uint8


def test_tta_averages_the_four_flips_of_the_whole_image_run(tmp_path):
    model = checkpoint(tmp_path, "test-pool", bands=2, classes=3)
    # sides on the stride grid: a flipped window then has the pooling grid of the flipped whole image
    image = np.random.default_rng(3).integers(0, 256, (2, 32, 48), dtype=np.uint8)
    runs = []
    for axes in ((), (1,), (2,), (1, 2)):  # the image's rows, columns, both
        flipped = np.ascontiguousarray(np.flip(image, axes))
        logits = reference_logits(model, write_raster(tmp_path / f"flip{''.join(map(str, axes))}.tif", flipped))
        runs.append(np.flip(torch.softmax(torch.from_numpy(logits), 0).numpy(), axes))
    expected = np.mean(runs, axis=0)
    assert np.abs(expected - runs[0]).max() > 1e-3  # the net is not flip-invariant: TTA changes the answer
    found = predict_array(model, image, SegmentOptions(tile=8, tta=True), probabilities=True)
    assert found.probabilities is not None
    np.testing.assert_allclose(found.probabilities, expected, atol=1e-5)
