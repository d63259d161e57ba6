"""U-Net (Ronneberger, Fischer and Brox, 2015), with valid (the paper's) or same-padded convolutions.

Contracting path: at each level two 3x3 convolutions with ReLU, then a 2x2 max-pool. Expanding path: a 2x2
transposed convolution (stride 2) that halves the channels, concatenation with the skip features of the same
level, two 3x3 convolutions. A final 1x1 convolution gives the class logits.

With ``padding="valid"`` every convolution loses a pixel on each side, so the output is smaller than the input
(572 -> 388 at depth 4) and the skip features are centre-cropped to the upsampled size. For a depth ``d``:

* input ``I`` and output ``O`` satisfy ``I - O = 12 * 2**d - 8``, i.e. ``shrink = 6 * 2**d - 4`` (92 at
  depth 4): each level ``k`` loses 4 pixels on the way down and 4 on the way up, at scale ``2**k``, and the
  bottleneck loses 4 at scale ``2**d``;
* every pooling needs an even size, which holds exactly when ``O % 2**d == 4 % 2**d`` (4 at depth >= 3);
* the crop of the level-``k`` skip is a constant, ``4 * (3 * 2**(d-k-1) - 2)`` pixels a side, whatever the
  input size, so shifting the input by ``2**d`` shifts the output by as much: the network is equivariant.

With ``padding="same"`` the output has the input's size, for inputs whose sides are multiples of ``2**d``.
"""

from __future__ import annotations

import torch
from torch import nn

from tileseg.models.base import SegmentationNet
from tileseg.models.blocks import ConvStack, Span, check_choice, check_input, check_int, check_sizes, default_tile
from tileseg.models.spec import BlendMode, Geometry

PADDINGS = ("valid", "same")


def valid_unet_sizes(depth: int) -> tuple[int, int, int]:
    """``(shrink, offset, min_output)`` of a valid-convolution U-Net of this depth.

    ``min_output`` is the smallest output length for which no feature map on the expanding path is empty.
    """
    stride = 2**depth
    shrink = 6 * stride - 4
    offset = 4 % stride
    # the expanding path maps a bottleneck length b to 2b - 4 per level; b = 4 is its fixed point, so the
    # smallest b <= 4 that keeps every level non-empty gives the smallest output
    def expanding(bottom: int) -> list[int]:
        sizes = [bottom]
        for _ in range(depth):
            sizes.append(2 * sizes[-1] - 4)
        return sizes

    sizes = next(s for s in map(expanding, range(1, 5)) if min(s) >= 1)
    return shrink, offset, sizes[-1]


class UNet(SegmentationNet):
    """The U-Net, valid or same-padded.

    Args:
        in_channels: input bands.
        num_classes: output classes.
        depth: number of poolings (the paper uses 4).
        base: channels at the first level; level ``k`` has ``base * 2**k`` (the paper uses 64).
        padding: ``"valid"`` (the paper: output smaller than input) or ``"same"`` (output size = input size).
        batch_norm: BatchNorm after every 3x3 convolution (not in the paper; it makes training easier).
    """

    def __init__(self, in_channels: int, num_classes: int, *, depth: int = 4, base: int = 16,
                 padding: str = "valid", batch_norm: bool = True) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        self.num_classes = check_int("num_classes", num_classes)
        self.depth = check_int("depth", depth, 1, 8)
        check_int("base", base)
        self.padding = check_choice("padding", padding, PADDINGS)
        self.hparams = {"depth": depth, "base": base, "padding": padding, "batch_norm": bool(batch_norm)}

        widths = [base * 2**k for k in range(depth + 1)]
        self.down = nn.ModuleList(
            ConvStack(in_channels if k == 0 else widths[k - 1], widths[k], 2, padding=padding,
                      batch_norm=batch_norm)
            for k in range(depth + 1)
        )
        self.pool = nn.MaxPool2d(2)
        # index k of up/dec is the expanding step that arrives at level k
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2) for k in range(depth))
        self.dec = nn.ModuleList(
            ConvStack(2 * widths[k], widths[k], 2, padding=padding, batch_norm=batch_norm) for k in range(depth)
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def _size_rule(self) -> tuple[int, int, int, int]:
        """``(multiple, offset, shrink, min_output)`` for the input-size check and the geometry."""
        multiple = 2**self.depth
        if self.padding == "same":
            return multiple, 0, 0, multiple
        shrink, offset, min_output = valid_unet_sizes(self.depth)
        return multiple, offset, shrink, min_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H - 2*shrink, W - 2*shrink)``.

        Raises:
            ValueError: the input's height or width does not fit the geometry; the message names the
                nearest sizes that do.
        """
        name = f"U-Net ({self.padding}, depth {self.depth})"
        check_input(name, x, self.in_channels)
        multiple, offset, shrink, min_output = self._size_rule()
        check_sizes(name, x, multiple, offset, shrink, min_output)
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for k in reversed(range(self.depth)):
            x = self.up[k](x)
            x = self.dec[k](torch.cat([_centre_crop(skips[k], x.shape[-2:]), x], dim=1))
        return self.head(x)

    def _span(self) -> Span:
        """The receptive field of the logits, along one axis, from the layer list."""
        pad = 1 if self.padding == "same" else 0
        span = Span.identity()
        skips = []
        for k in range(self.depth + 1):
            if k:
                span = span.conv(2, stride=2)
            span = span.conv(3, padding=pad).conv(3, padding=pad)
            skips.append(span)
        for k in reversed(range(self.depth)):
            span = span.up(2, 2)
            crop = 4 * (3 * 2 ** (self.depth - k - 1) - 2) if self.padding == "valid" else 0
            span = (skips[k].shift(crop) | span).conv(3, padding=pad).conv(3, padding=pad)
        return span

    def geometry(self) -> Geometry:
        """Stride ``2**depth``; valid: shrink ``6 * 2**depth - 4`` (92 at depth 4) and offset ``4 % 2**depth``.

        The halo is the least that makes tiling exact (``Span.tile_halo``): 92 for the valid net at depth 4,
        the paper's own margin, and 94 for the same-padded one. The receptive-field radius is larger (107): an
        output pixel late in its stride period reaches further back, but its core, which starts on the stride
        grid, starts further back as well, and its window with it.
        """
        multiple, offset, shrink, _ = self._size_rule()
        halo = self._span().tile_halo(multiple, offset, shrink)
        return Geometry(halo=halo, multiple=multiple, offset=offset, shrink=shrink,
                        default_tile=default_tile(halo, multiple), equivariant=True, blend=BlendMode.CROP)


def _centre_crop(features: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """The centre ``size`` of ``features`` (for valid U-Net skips; a no-op when the sizes already agree)."""
    top = (features.shape[-2] - size[0]) // 2
    left = (features.shape[-1] - size[1]) // 2
    return features[..., top:top + size[0], left:left + size[1]]
