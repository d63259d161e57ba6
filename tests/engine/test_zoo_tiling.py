"""Tiled == whole image through the engine, for every convolutional architecture of the zoo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engine.nets import checkpoint
from tests.engine.test_engine import reference_logits, tiled_logits
from tests.models.conftest import TINY_HPARAMS

CASES = [
    ("fcn32s", {}),
    ("fcn16s", {}),
    ("fcn8s", {}),
    ("unet", {"padding": "valid"}),
    ("unet", {"padding": "same"}),
    ("unet", {"padding": "valid", "depth": 4, "base": 2}),
    ("unetpp", {}),
    ("unetpp", {"prune": 2}),
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch,extra", CASES, ids=[f"{a}-{'-'.join(map(str, e.values()))}" for a, e in CASES])
def test_zoo_tiles_equal_the_whole_image(tmp_path, raster_factory, arch, extra):
    model = checkpoint(tmp_path, arch, bands=2, classes=3, **{**TINY_HPARAMS[arch], **extra})
    path = raster_factory(50, 37, bands=2)
    expected = reference_logits(model, path)
    step = model.spec.geometry.multiple
    for tile in (step, 2 * step):
        np.testing.assert_allclose(
            tiled_logits(model, path, tile, batch=2), expected, atol=1e-4, rtol=0, err_msg=f"{arch} {extra} tile {tile}"
        )
