"""The batch runner: what comes back in crop and blended modes, with flips, and when a runtime fails.

The network is ``test-shift``, a known answer: a window's uint8 values ``v`` come back as the class index of
the pixel ``(dy, dx)`` away, with logits ``-(v - k)^2`` for channel ``k``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engine.nets import checkpoint
from tileseg.engine import batches as batches_module
from tileseg.engine.batches import BatchRunner
from tileseg.engine.io import Scaling
from tileseg.engine.runtime.runtimes import BASELINE, Runtime
from tileseg.engine.tiling import TileSettings

CLASSES = 8
CORE = 8  # with a halo of 8: windows of 24 px, cores at 8 .. 16
KEEP = slice(8, 16)
CPU = torch.device("cpu")
UINT8 = Scaling(
    low=np.zeros(1, np.float32),
    high=np.full(1, 255, np.float32),
    a=np.full(1, 1 / 255, np.float32),
    b=np.zeros(1, np.float32),
    clip=False,
)


@pytest.fixture
def pointwise(tmp_path):
    return checkpoint(tmp_path, "test-shift", bands=1, classes=CLASSES, dy=0, dx=0, halo=8, multiple=4)


@pytest.fixture
def shifted(tmp_path):
    return checkpoint(tmp_path, "test-shift", bands=1, classes=CLASSES, dy=3, dx=-5, halo=8, multiple=4, name="shifted")


@pytest.fixture
def batch() -> np.ndarray:
    """Three raw windows ``(3, 1, 24, 24)`` of values 0..7, each different."""
    return np.random.default_rng(0).integers(0, CLASSES, (3, 1, 24, 24), dtype=np.uint8)


def make_runner(model, blend: str = "crop", **kwargs) -> BatchRunner:
    settings = TileSettings(model.spec.geometry, core=CORE, blend=blend, batch=4)
    return BatchRunner(model, settings, UINT8, CPU, **kwargs)


def softmax_of_known_logits(values: np.ndarray) -> np.ndarray:
    """``(B, K, n, n)`` probabilities of the known-answer net for ``(B, n, n)`` values."""
    logits = -((values[:, None].astype(np.float64) - np.arange(CLASSES)[None, :, None, None]) ** 2)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_crop_mode_gives_the_cores_labels_and_no_probabilities(pointwise, batch):
    runner = make_runner(pointwise)
    assert not runner.gives_probabilities
    prediction = runner(batch)
    assert prediction.probabilities is None
    assert prediction.labels.shape == (3, CORE, CORE) and prediction.labels.dtype == np.uint8
    np.testing.assert_array_equal(prediction.labels, batch[:, 0, KEEP, KEEP])
    assert len(prediction) == 3
    for i in range(3):  # each tile's own prediction, in the batch's order
        np.testing.assert_array_equal(prediction[i].labels, batch[i, 0, KEEP, KEEP])
        assert prediction[i].probabilities is None


def test_crop_mode_gives_the_cores_probabilities_when_asked(pointwise, batch):
    runner = make_runner(pointwise, probabilities=True)
    assert runner.gives_probabilities
    prediction = runner(batch)
    assert prediction.probabilities.shape == (3, CLASSES, CORE, CORE)
    assert prediction.probabilities.dtype == np.float32
    np.testing.assert_allclose(
        prediction.probabilities, softmax_of_known_logits(batch[:, 0, KEEP, KEEP]), rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal(prediction.labels, batch[:, 0, KEEP, KEEP])


def test_logits_in_place_of_probabilities(pointwise, batch):
    prediction = make_runner(pointwise, logits=True)(batch)
    core = batch[:, 0, KEEP, KEEP].astype(np.float32)
    np.testing.assert_array_equal(prediction.probabilities, -((core[:, None] - np.arange(CLASSES)[:, None, None]) ** 2))
    np.testing.assert_array_equal(prediction.labels, batch[:, 0, KEEP, KEEP])


@pytest.mark.parametrize("blend", ["gaussian", "cosine"])
def test_blended_modes_give_the_whole_windows_probabilities(pointwise, batch, blend):
    runner = make_runner(pointwise, blend=blend)
    assert runner.gives_probabilities
    prediction = runner(batch)
    assert prediction.labels is None and prediction[0].labels is None
    output = runner.settings.output_size
    assert output == 24 and prediction.probabilities.shape == (3, CLASSES, output, output)
    np.testing.assert_allclose(prediction.probabilities, softmax_of_known_logits(batch[:, 0]), rtol=0, atol=1e-6)


def flipped_average(model, batch: np.ndarray) -> np.ndarray:
    """Test-time augmentation by hand: each flip of the windows through the network, its probabilities
    flipped back, the four averaged."""
    x = torch.from_numpy(batch).float() / 255
    total = 0
    with torch.inference_mode():
        for dims in ((), (3,), (2,), (2, 3)):
            probs = torch.softmax(model(torch.flip(x, dims)), dim=1)
            total = total + torch.flip(probs, dims).numpy()
    return total / 4


def test_tta_averages_the_four_flips_flipped_back(shifted, batch):
    plain = make_runner(shifted, probabilities=True)(batch)
    runner = make_runner(shifted, tta=True)
    assert runner.gives_probabilities  # averaged probabilities come back even when not asked for
    prediction = runner(batch)
    expected = flipped_average(shifted, batch)[:, :, KEEP, KEEP]
    assert np.abs(expected - plain.probabilities).max() > 0.1  # a net that is not flip-symmetric: TTA shows
    np.testing.assert_allclose(prediction.probabilities, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(prediction.labels, expected.argmax(axis=1))


def test_tta_keeps_a_pointwise_answer(pointwise, batch):
    prediction = make_runner(pointwise, tta=True, blend="gaussian")(batch)
    np.testing.assert_allclose(prediction.probabilities, softmax_of_known_logits(batch[:, 0]), rtol=0, atol=1e-6)


def test_a_failing_runtime_falls_back_to_eager_fp32(pointwise, batch, monkeypatch):
    real = batches_module.run_forward
    tried = []

    def run_forward(model, runtime, x, device):
        tried.append(runtime)
        if runtime != BASELINE:
            raise RuntimeError("no kernel for this precision")
        return real(model, runtime, x, device)

    monkeypatch.setattr(batches_module, "run_forward", run_forward)
    runner = make_runner(pointwise, runtime=Runtime("bf16"))
    prediction = runner(batch)
    assert tried == [Runtime("bf16"), BASELINE] and runner.runtime == BASELINE
    np.testing.assert_array_equal(prediction.labels, batch[:, 0, KEEP, KEEP])


def test_a_compiled_network_sees_full_batches_only(pointwise, batch, monkeypatch):
    real = batches_module.run_forward
    sizes = []

    def run_forward(model, runtime, x, device):
        sizes.append(x.shape[0])
        return real(model, BASELINE, x, device)

    monkeypatch.setattr(batches_module, "run_forward", run_forward)
    prediction = make_runner(pointwise, runtime=Runtime(mode="compiled"))(batch)  # 3 windows, batch 4
    assert sizes == [4] and len(prediction) == 3
    np.testing.assert_array_equal(prediction.labels, batch[:, 0, KEEP, KEEP])
