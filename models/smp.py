"""segmentation_models_pytorch architectures as registry entries: ``build_model("smp:Unet", ...)``.

smp is an optional extra (``pip install tileseg[smp]``). Networks are always built with
``encoder_weights=None``: the weights come from the user's state dict, and nothing is ever downloaded.
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Any

import torch

from tileseg.models.base import SegmentationNet
from tileseg.models.errors import CheckpointError, UnknownArchitectureError

PREFIX = "smp:"
# kept alive for the life of the process: dropping the Library object would unregister its schemas
_TORCHVISION_SCHEMAS: list[torch.library.Library] = []


def import_smp() -> Any:
    """Import segmentation_models_pytorch, offline.

    Raises:
        CheckpointError: smp is not installed (the message names the extra).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        _import_torchvision()
        import segmentation_models_pytorch as smp
    except ImportError as err:
        raise CheckpointError(f"smp architectures need the smp extra: pip install 'tileseg[smp]' ({err})") from err
    return smp


def _import_torchvision() -> None:
    # PyPI's torchvision wheels beside a CPU-only torch are CUDA builds whose compiled ops fail to register, so
    # `import torchvision` dies on "operator torchvision::nms does not exist" while declaring its Python fakes.
    # smp's encoders need only torchvision's Python layer (model definitions, never nms), so declaring the two
    # missing schemas lets it import; the compiled ops would still fail if called, which segmentation never does.
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[module]
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_SCHEMAS.append(library)
        import torchvision  # noqa: F401


class SmpNet(SegmentationNet):
    """An smp network (``self.net``) under the zoo's interface; its geometry is measured, never derived.

    Args:
        architecture: smp's class name (``Unet``, ``UnetPlusPlus``, ``FPN``, ``DeepLabV3Plus``, ``Segformer``...).
        in_channels, num_classes: bands in, classes out.
        params: smp's own keyword arguments (``encoder_name``, ``encoder_depth``...).

    Raises:
        UnknownArchitectureError: smp has no such architecture (the message lists its names).
        CheckpointError: smp is not installed.
        TypeError, ValueError: smp refuses the parameters.
    """

    def __init__(self, architecture: str, in_channels: int, num_classes: int, **params: Any):
        super().__init__()
        smp = import_smp()
        names = sorted(smp.MODEL_ARCHITECTURES_MAPPING.values(), key=lambda cls: cls.__name__)
        classes = {cls.__name__: cls for cls in names}
        if architecture not in classes:
            close = difflib.get_close_matches(architecture, classes, n=1)
            hint = f" Did you mean {PREFIX}{close[0]}?" if close else ""
            valid = ", ".join(PREFIX + n for n in classes)
            raise UnknownArchitectureError(f"unknown architecture {PREFIX}{architecture}.{hint} Valid: {valid}")
        params = {k: v for k, v in params.items() if k != "encoder_weights"}
        self.hparams = dict(params)
        self.net = classes[architecture](encoder_weights=None, in_channels=in_channels, classes=num_classes, **params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
