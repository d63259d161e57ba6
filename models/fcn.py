"""Fully convolutional networks (Long, Shelhamer and Darrell, 2015): FCN-32s, FCN-16s and FCN-8s.

A VGG-style encoder (five blocks of 3x3 convolutions, each ending in a 2x2 max-pool: stride 32), the classifier
turned convolutional (fc6 as a 7x7 convolution, fc7 as a 1x1), a 1x1 class-score layer and learned
transposed-convolution upsampling initialised to bilinear interpolation. FCN-16s adds the scores of pool4 before
the last upsampling, FCN-8s those of pool4 and pool3.

Unlike the paper (which pads the input by 100 pixels and crops the upsampled scores), every convolution here is
zero-padded and every upsampling is sized to give exactly twice (or 8, 16, 32 times) its input, so an input whose
sides are multiples of 32 yields logits of the same size, aligned pixel for pixel, with no size-dependent crop:
the network is translation-equivariant for shifts by 32.
"""

from __future__ import annotations

import torch
from torch import nn

from tileseg.models.base import SegmentationNet
from tileseg.models.blocks import ConvStack, Span, check_choice, check_input, check_int, check_sizes, default_tile
from tileseg.models.spec import BlendMode, Geometry

VARIANTS = ("32s", "16s", "8s")
STRIDE = 32  # five 2x2 poolings


def bilinear_upsampling(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable channel-wise transposed convolution that upsamples by ``factor``, starting as bilinear
    interpolation.

    Kernel ``2 * factor`` with padding ``factor / 2`` maps ``n`` pixels to exactly ``factor * n``, and puts the
    centre of coarse pixel ``i`` at the centre of fine pixels ``factor * i ... factor * i + factor - 1``. The
    paper's upsampling mixes classes (a full K x K kernel), which its bilinear start leaves at zero anyway; one
    kernel per class keeps the parameters linear in K (a full x32 kernel at 100 classes would be 41 M).
    """
    kernel = 2 * factor
    layer = nn.ConvTranspose2d(channels, channels, kernel, stride=factor, padding=factor // 2, groups=channels,
                               bias=False)
    centre = (kernel - 1) / 2
    taps = 1 - (torch.arange(kernel, dtype=torch.float64) - centre).abs() / factor
    with torch.no_grad():
        layer.weight.copy_(torch.outer(taps, taps).expand_as(layer.weight))
    return layer


class FCN(SegmentationNet):
    """FCN-32s/16s/8s with a scaled-down, configurable VGG encoder.

    Args:
        in_channels: input bands.
        num_classes: output classes.
        variant: ``"32s"``, ``"16s"`` (adds pool4 scores) or ``"8s"`` (adds pool4 and pool3 scores).
        widths: channels of the five encoder blocks (VGG-16 uses 64, 128, 256, 512, 512).
        convs: 3x3 convolutions per block (VGG-16: 2, 2, 3, 3, 3).
        fc_width: channels of fc6 and fc7 (VGG-16: 4096).
        batch_norm: BatchNorm after every encoder convolution (not in the paper; it makes training from scratch
            practical).
        dropout: dropout probability after fc6 and fc7.

    Inputs must have sides that are multiples of 32; the logits have the input's size.
    """

    def __init__(self, in_channels: int, num_classes: int, *, variant: str = "8s",
                 widths: list[int] | tuple[int, ...] = (16, 32, 64, 128, 128),
                 convs: list[int] | tuple[int, ...] = (2, 2, 3, 3, 3), fc_width: int = 256,
                 batch_norm: bool = True, dropout: float = 0.5) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        self.num_classes = check_int("num_classes", num_classes)
        self.variant = check_choice("variant", variant, VARIANTS)
        widths, convs = list(widths), list(convs)
        if len(widths) != 5 or len(convs) != 5:
            raise ValueError(f"FCN has five encoder blocks: widths and convs need five values each, "
                             f"got {len(widths)} and {len(convs)}")
        for k in range(5):
            check_int(f"widths[{k}]", widths[k])
            check_int(f"convs[{k}]", convs[k])
        check_int("fc_width", fc_width)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        self.convs = tuple(convs)
        self.hparams = {"variant": variant, "widths": widths, "convs": convs, "fc_width": fc_width,
                        "batch_norm": bool(batch_norm), "dropout": float(dropout)}

        self.blocks = nn.ModuleList()
        previous = in_channels
        for width, count in zip(widths, convs):
            self.blocks.append(nn.Sequential(ConvStack(previous, width, count, padding="same",
                                                       batch_norm=batch_norm),
                                             nn.MaxPool2d(2)))
            previous = width
        self.fc = nn.Sequential(
            nn.Conv2d(widths[4], fc_width, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv2d(fc_width, fc_width, 1), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.score = nn.Conv2d(fc_width, num_classes, 1)
        if variant in ("16s", "8s"):
            self.score_pool4 = self._skip_score(widths[3], num_classes)
            self.up_to_pool4 = bilinear_upsampling(num_classes, 2)
        if variant == "8s":
            self.score_pool3 = self._skip_score(widths[2], num_classes)
            self.up_to_pool3 = bilinear_upsampling(num_classes, 2)
        self.up_final = bilinear_upsampling(num_classes, self._final_factor)

    @staticmethod
    def _skip_score(channels: int, num_classes: int) -> nn.Conv2d:
        layer = nn.Conv2d(channels, num_classes, 1)
        # zero-initialised as in the paper, so a fresh skip starts as the coarser net and only adds detail
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
        return layer

    @property
    def _final_factor(self) -> int:
        return {"32s": 32, "16s": 16, "8s": 8}[self.variant]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for an input ``(B, in_channels, H, W)``, H and W multiples of 32."""
        check_input(f"FCN-{self.variant}", x, self.in_channels)
        check_sizes(f"FCN-{self.variant}", x, STRIDE)
        pools = []
        for block in self.blocks:
            x = block(x)
            pools.append(x)
        scores = self.score(self.fc(x))
        if self.variant in ("16s", "8s"):
            scores = self.up_to_pool4(scores) + self.score_pool4(pools[3])
        if self.variant == "8s":
            scores = self.up_to_pool3(scores) + self.score_pool3(pools[2])
        return self.up_final(scores)

    def _span(self) -> Span:
        """The receptive field of the logits, along one axis, from the layer list."""
        span = Span.identity()
        pools = []
        convs: list[int] = list(self.convs)
        for count in convs:
            for _ in range(count):
                span = span.conv(3, padding=1)
            span = span.conv(2, stride=2)
            pools.append(span)
        span = span.conv(7, padding=3)  # fc6; fc7 and the score layer are 1x1
        if self.variant in ("16s", "8s"):
            span = span.up(4, 2, 1) | pools[3]
        if self.variant == "8s":
            span = span.up(4, 2, 1) | pools[2]
        factor = self._final_factor
        return span.up(2 * factor, factor, factor // 2)

    def geometry(self) -> Geometry:
        """Stride 32, padded (no shrink); the halo is the least that makes tiling exact (see ``Span.tile_halo``)."""
        halo = self._span().tile_halo(STRIDE)
        return Geometry(halo=halo, multiple=STRIDE, offset=0, shrink=0, default_tile=default_tile(halo, STRIDE),
                        equivariant=True, blend=BlendMode.CROP)
