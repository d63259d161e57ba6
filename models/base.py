"""What every architecture in the zoo provides on top of ``nn.Module``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tileseg.models.spec import Geometry, ModelSpec


class SegmentationNet(nn.Module):
    """A dense-prediction network: ``(B, bands, H, W)`` in, ``(B, classes, H - 2s, W - 2s)`` logits out.

    Subclasses keep their hyper-parameters in ``self.hparams`` (a JSON-able dict, written into the model
    card) and derive their tiling geometry from their architecture in :meth:`geometry`.
    """

    hparams: dict
    # set by :func:`tileseg.models.load`: what the engine reads, the whole card, and where it came from
    spec: ModelSpec
    card: dict[str, Any]
    checkpoint_path: Path | None = None
    # whether the runtime tuner may try torch.compile and other memory formats (not for TorchScript or ONNX)
    compilable: bool = True

    def geometry(self) -> Geometry:
        raise NotImplementedError
