"""What every architecture in the zoo provides on top of ``nn.Module``."""

from __future__ import annotations

from torch import nn

from .spec import Geometry


class SegmentationNet(nn.Module):
    """A dense-prediction network: ``(B, bands, H, W)`` in, ``(B, classes, H - 2s, W - 2s)`` logits out.

    Subclasses keep their hyper-parameters in ``self.hparams`` (a JSON-able dict, written into the model
    card) and derive their tiling geometry from their architecture in :meth:`geometry`.
    """

    hparams: dict

    def geometry(self) -> Geometry:
        raise NotImplementedError
