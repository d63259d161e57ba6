"""Shared fixtures for the architecture tests: every registry entry built at test size."""

from __future__ import annotations

import pytest
import torch

from tileseg.models.registry import build_model

_FCN = {"widths": [2, 4, 4, 8, 8], "convs": [1, 1, 2, 1, 1], "fc_width": 8}
_SETR = {"img_size": 64, "embed_dim": 16, "depth": 2, "heads": 2, "mla_streams": 2, "decoder_channels": 8}

# hyper-parameters that make each registered architecture small enough for a 2-core CI machine; a new
# registry entry needs one here (test_architectures checks that)
TINY_HPARAMS: dict[str, dict] = {
    "fcn32s": _FCN,
    "fcn16s": _FCN,
    "fcn8s": _FCN,
    "unet": {"depth": 2, "base": 4},
    "unetpp": {"depth": 4, "base": 2},
    "setr-naive": _SETR,
    "setr-pup": _SETR,
    "setr-mla": _SETR,
}


@pytest.fixture
def tiny():
    """``tiny(arch, in_channels=1, num_classes=2, **overrides)``: a registry architecture at test size."""

    def build(arch: str, in_channels: int = 1, num_classes: int = 2, **overrides):
        return build_model(arch, in_channels, num_classes, **{**TINY_HPARAMS[arch], **overrides})

    return build


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    """Deterministic weights and inputs, and one intra-op thread: these tensors are tiny, and on a shared
    2-core machine every parallel region of a tiny op can wait milliseconds for a descheduled thread."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_hparams() -> dict[str, dict]:
    """The test-size hyper-parameters of every architecture, by registry name."""
    return TINY_HPARAMS
