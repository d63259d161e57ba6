"""The network a run trains: built from the registry with the run's seed, the output crop it takes, and
the heads the loss scores (every deep-supervision head, or the one output)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tileseg.models.base import SegmentationNet
from tileseg.models.registry import build_model
from tileseg.models.spec import Geometry
from tileseg.training.config import TrainConfig
from tileseg.training.errors import TrainingConfigError


def nearest_valid_crop(geometry: Geometry, wanted: int) -> int:
    """The valid output length (``O % multiple == offset``, at least one multiple) nearest to ``wanted``;
    of two equally near, the larger."""
    above = geometry.window_output(max(wanted, 1))
    below = above - geometry.multiple
    smallest = geometry.window_output(geometry.multiple)
    if below < smallest:
        return max(above, smallest)
    return below if wanted - below < above - wanted else above


def build_network(
    config: TrainConfig, bands: int, num_classes: int, say: Callable[[str], None]
) -> tuple[SegmentationNet, int, bool]:
    """The untrained net, its output crop side and whether deep supervision is on.

    The weights are drawn from ``config.seed``: the same on every process, and from run to run.

    Raises:
        TrainingConfigError: the architecture refuses the parameters, or deep supervision is asked of a net
            without deep-supervision heads.
    """
    torch.manual_seed(config.seed)
    try:
        net = build_model(config.arch, in_channels=bands, num_classes=num_classes, **config.params)
    except (TypeError, ValueError) as err:
        raise TrainingConfigError(f"cannot build {config.arch} with {config.params}: {err}") from err
    geometry = net.geometry()
    output = nearest_valid_crop(geometry, config.crop)
    if output != config.crop:
        say(
            f"crop {config.crop} does not fit {config.arch} (output % {geometry.multiple} must be "
            f"{geometry.offset}); using the nearest valid output crop {output}"
        )
    # a U-Net++ built without deep supervision has forward_deep, but only its one head behind it
    has_deep = callable(getattr(net, "forward_deep", None)) and net.hparams.get("deep_supervision", True) is not False
    if config.deep_supervision and not has_deep:
        raise TrainingConfigError(f"{config.arch} has no deep-supervision heads (no forward_deep)")
    deep = has_deep if config.deep_supervision is None else config.deep_supervision
    return net, output, deep


class Heads(nn.Module):
    """The network as trained: its deep-supervision heads, or its one output, as a list.

    DistributedDataParallel synchronises gradients of what its wrapped ``forward`` computes, so the choice
    between ``forward_deep`` and ``forward`` has to live inside a module's forward.
    """

    def __init__(self, net: nn.Module, deep: bool) -> None:
        super().__init__()
        self.net: Any = net  # forward_deep, where there is one, is the architecture's own
        self.deep = deep

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net.forward_deep(x)) if self.deep else [self.net(x)]


def check_output(logits: torch.Tensor, output: int, input_size: int, arch: str) -> None:
    """Check that the net's logits have the size its geometry promises for the crop.

    Raises:
        TrainingConfigError: they do not.
    """
    if logits.shape[-2:] != (output, output):
        raise TrainingConfigError(
            f"{arch} returned {tuple(logits.shape[-2:])} logits for a {input_size}-pixel input; its geometry "
            f"promises {output}x{output}"
        )
