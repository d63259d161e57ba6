"""Architecture names mapped to constructors: ``build_model("unet", in_channels=1, num_classes=2, ...)``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import partial

from tileseg.models.base import SegmentationNet
from tileseg.models.errors import UnknownArchitectureError
from tileseg.models.fcn import FCN
from tileseg.models.setr import SETR
from tileseg.models.unet import UNet
from tileseg.models.unetpp import UNetPlusPlus

ARCHITECTURES: dict[str, Callable[..., SegmentationNet]] = {
    "fcn32s": partial(FCN, variant="32s"),
    "fcn16s": partial(FCN, variant="16s"),
    "fcn8s": partial(FCN, variant="8s"),
    "unet": UNet,
    "unetpp": UNetPlusPlus,
    "setr-naive": partial(SETR, decoder="naive"),
    "setr-pup": partial(SETR, decoder="pup"),
    "setr-mla": partial(SETR, decoder="mla"),
}


def build_model(arch: str, in_channels: int, num_classes: int, **hparams) -> SegmentationNet:
    """Build an untrained network of a registered architecture, or of segmentation_models_pytorch's
    (``smp:Unet``, ``smp:FPN``..., with smp's own keyword arguments; the smp extra must be installed).

    Raises:
        UnknownArchitectureError: ``arch`` is not registered; the message lists the valid names.
        CheckpointError: an ``smp:`` architecture without smp installed.
    """
    if arch.startswith("smp:"):
        from tileseg.models.smp import SmpNet  # optional: imported only for the smp architectures

        return SmpNet(arch.removeprefix("smp:"), in_channels, num_classes, **hparams)
    try:
        constructor = ARCHITECTURES[arch]
    except KeyError:
        close = difflib.get_close_matches(arch, ARCHITECTURES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownArchitectureError(
            f"unknown architecture {arch!r}.{hint} Valid: {', '.join(sorted(ARCHITECTURES))}, "
            "or smp:NAME (segmentation_models_pytorch)"
        ) from None
    return constructor(in_channels=in_channels, num_classes=num_classes, **hparams)
