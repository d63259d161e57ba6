"""U-Net++ (Zhou, Rahman Siddiquee, Tajbakhsh and Liang, 2018): nested, dense skip pathways.

Node ``X^{i,j}`` sits at level ``i`` (scale ``2**i``) and column ``j``. Column 0 is the encoder (two 3x3
convolutions per level, 2x2 max-pool between levels); every other node is

    X^{i,j} = convs(concat(X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})))

with ``up`` a 2x2 stride-2 transposed convolution. A 1x1 head on each ``X^{0,j}`` (j = 1..depth) gives deep
supervision during training, and lets the trained net be pruned at inference: level ``L`` needs only the nodes
with ``i + j <= L`` and answers with head ``L``. All convolutions are padded, so the output has the input's
size. A pruned net keeps every parameter (so it loads the full checkpoint) but evaluates only its sub-network.
"""

from __future__ import annotations

import torch
from torch import nn

from tileseg.models.base import SegmentationNet
from tileseg.models.blocks import ConvStack, Span, check_input, check_int, check_sizes, default_tile
from tileseg.models.spec import BlendMode, Geometry


class UNetPlusPlus(SegmentationNet):
    """U-Net++ with optional deep supervision and pruning.

    Args:
        in_channels: input bands.
        num_classes: output classes.
        depth: number of poolings (the paper uses 4).
        base: channels at level 0; level ``i`` has ``base * 2**i`` (the paper uses 32).
        deep_supervision: give every ``X^{0,j}`` a head (needed for :meth:`forward_deep` with several outputs
            and for pruning); otherwise only ``X^{0,depth}`` has one.
        prune: evaluate only the level-``L`` sub-network (``1 <= L <= depth``) and return head ``L``;
            ``None`` is the full net.
        batch_norm: BatchNorm after every 3x3 convolution.

    Inputs must have sides that are multiples of ``2**L`` (``L`` the evaluated level).
    """

    def __init__(self, in_channels: int, num_classes: int, *, depth: int = 4, base: int = 16,
                 deep_supervision: bool = True, prune: int | None = None, batch_norm: bool = True) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        self.num_classes = check_int("num_classes", num_classes)
        self.depth = check_int("depth", depth, 1, 8)
        check_int("base", base)
        if prune is not None:
            check_int("prune", prune, 1, depth)
            if not deep_supervision and prune != depth:
                raise ValueError(f"prune={prune} needs the head on X^(0,{prune}): build with deep_supervision=True")
        self.deep_supervision = bool(deep_supervision)
        self.levels = depth if prune is None else prune
        self.hparams = {"depth": depth, "base": base, "deep_supervision": self.deep_supervision, "prune": prune,
                        "batch_norm": bool(batch_norm)}

        widths = [base * 2**i for i in range(depth + 1)]
        self.pool = nn.MaxPool2d(2)
        self.nodes = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for i in range(depth + 1):
            self.nodes[_key(i, 0)] = ConvStack(in_channels if i == 0 else widths[i - 1], widths[i], 2,
                                               batch_norm=batch_norm)
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                self.ups[_key(i, j)] = nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                # j same-level predecessors plus the upsampled node below, each widths[i] channels
                self.nodes[_key(i, j)] = ConvStack((j + 1) * widths[i], widths[i], 2, batch_norm=batch_norm)
        head_columns = range(1, depth + 1) if deep_supervision else [depth]
        self.heads = nn.ModuleDict({str(j): nn.Conv2d(widths[0], num_classes, 1) for j in head_columns})

    def _evaluate(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The top-row nodes ``X^{0,1..L}`` of the evaluated sub-network."""
        check_input("U-Net++", x, self.in_channels)
        check_sizes(f"U-Net++ (level {self.levels})", x, 2**self.levels)
        nodes: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(self.levels + 1):
            nodes[i, 0] = self.nodes[_key(i, 0)](x if i == 0 else self.pool(nodes[i - 1, 0]))
        # column by column: X^{i,j} needs X^{i+1,j-1} from the previous column
        for j in range(1, self.levels + 1):
            for i in range(self.levels + 1 - j):
                inputs = [nodes[i, k] for k in range(j)] + [self.ups[_key(i, j)](nodes[i + 1, j - 1])]
                nodes[i, j] = self.nodes[_key(i, j)](torch.cat(inputs, dim=1))
        return [nodes[0, j] for j in range(1, self.levels + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` of head ``L`` (the last head, or the pruning level).

        Raises:
            ValueError: the input's height or width is not a multiple of ``2**L``.
        """
        return self.heads[str(self.levels)](self._evaluate(x)[-1])

    def forward_deep(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits of every head on the evaluated top row, ``X^{0,1}`` first (for deep supervision).

        Without ``deep_supervision`` only ``X^{0,depth}`` has a head, and the list holds that one.
        """
        top = self._evaluate(x)
        return [self.heads[str(j)](top[j - 1]) for j in range(1, self.levels + 1) if str(j) in self.heads]

    def _span(self) -> Span:
        """The receptive field of the evaluated head, along one axis, from the node graph."""
        spans: dict[tuple[int, int], Span] = {}
        for i in range(self.levels + 1):
            below = Span.identity() if i == 0 else spans[i - 1, 0].conv(2, stride=2)
            spans[i, 0] = below.conv(3, padding=1).conv(3, padding=1)
        for j in range(1, self.levels + 1):
            for i in range(self.levels + 1 - j):
                span = spans[i + 1, j - 1].up(2, 2)
                for k in range(j):
                    span = span | spans[i, k]
                spans[i, j] = span.conv(3, padding=1).conv(3, padding=1)
        return spans[0, self.levels]

    def geometry(self) -> Geometry:
        """Stride ``2**L`` of the evaluated sub-network (its deepest pooling), no shrink; the halo is the least
        that makes tiling exact (see ``Span.tile_halo``)."""
        multiple = 2**self.levels
        halo = self._span().tile_halo(multiple)
        return Geometry(halo=halo, multiple=multiple, offset=0, shrink=0, default_tile=default_tile(halo, multiple),
                        equivariant=True, blend=BlendMode.CROP)


def _key(i: int, j: int) -> str:
    return f"x{i}_{j}"
