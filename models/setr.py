"""SETR (Zheng et al., 2021): a ViT encoder with a convolutional decoder (naive, PUP or MLA).

The encoder cuts the image into 16x16 patches (a stride-16 convolution), adds learned positional embeddings and
runs a stack of pre-norm transformer blocks. The embeddings are learned for an ``img_size // 16`` square grid
and bicubically resized to the grid of any other input (any multiple of 16, square or not).

Decoders, on the ``H/16 x W/16`` token grid:

* naive: 1x1 conv, BatchNorm, ReLU, 1x1 conv to the classes, bilinear x16;
* PUP (progressive upsampling): four stages of 3x3 conv, BatchNorm, ReLU and bilinear x2, then a 1x1 conv;
* MLA (multi-level aggregation): M streams from evenly spaced encoder layers; each 1x1 conv C -> C/2, a
  top-down sum from the deepest stream, 3x3 convs to C/2 and C/4, bilinear x4; the streams are concatenated,
  a 1x1 conv gives the classes, bilinear x4.

Self-attention sees the whole window, so no finite halo makes tiles exact: the geometry asks for blended
overlap, with a window (core + 2 * halo) equal to the training size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tileseg.models.base import SegmentationNet
from tileseg.models.blocks import check_choice, check_input, check_int, check_sizes
from tileseg.models.spec import BlendMode, Geometry

DECODERS = ("naive", "pup", "mla")
PATCH = 16
HALO = 32


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: multi-head self-attention, then a GELU MLP, each residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, dim = tokens.shape
        q, k, v = self.qkv(self.norm1(tokens)).reshape(batch, count, 3, self.heads, dim // self.heads).unbind(2)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  dropout_p=self.dropout if self.training else 0.0)
        tokens = tokens + self.proj(attended.transpose(1, 2).reshape(batch, count, dim))
        return tokens + self.mlp(self.norm2(tokens))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class NaiveDecoder(nn.Module):
    """1x1 conv + BN + ReLU, 1x1 conv to the classes; the caller upsamples x16."""

    def __init__(self, dim: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(_conv_bn_relu(dim, channels, 1), nn.Conv2d(channels, num_classes, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.layers(features[-1])


class PUPDecoder(nn.Module):
    """Four stages of 3x3 conv + BN + ReLU and bilinear x2 (x16 in all), then a 1x1 conv to the classes."""

    def __init__(self, dim: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(_conv_bn_relu(dim if k == 0 else channels, channels, 3) for k in range(4))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for stage in self.stages:
            x = F.interpolate(stage(x), scale_factor=2, mode="bilinear", align_corners=False)
        return self.classifier(x)


class MLADecoder(nn.Module):
    """Multi-level aggregation over ``streams`` encoder layers (shallowest first); output at 1/4 scale is
    upsampled by the caller."""

    def __init__(self, dim: int, streams: int, num_classes: int) -> None:
        super().__init__()
        half, quarter = dim // 2, dim // 4
        self.reduce = nn.ModuleList(_conv_bn_relu(dim, half, 1) for _ in range(streams))
        self.refine = nn.ModuleList(nn.Sequential(_conv_bn_relu(half, half, 3), _conv_bn_relu(half, quarter, 3))
                                    for _ in range(streams))
        self.classifier = nn.Conv2d(streams * quarter, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        reduced = [layer(f) for layer, f in zip(self.reduce, features)]
        # top-down: each stream adds the aggregate of every deeper stream
        for m in reversed(range(len(reduced) - 1)):
            reduced[m] = reduced[m] + reduced[m + 1]
        outputs = [F.interpolate(refine(r), scale_factor=4, mode="bilinear", align_corners=False)
                   for refine, r in zip(self.refine, reduced)]
        return self.classifier(torch.cat(outputs, dim=1))


class SETR(SegmentationNet):
    """SEgmentation TRansformer: ViT-style encoder, naive, PUP or MLA decoder.

    Args:
        in_channels: input bands.
        num_classes: output classes.
        decoder: ``"naive"``, ``"pup"`` or ``"mla"``.
        img_size: the training tile (a multiple of 16); the positional embeddings are learned for its grid.
        embed_dim: token width C (the paper's ViT-L: 1024).
        depth: transformer blocks (ViT-L: 24).
        heads: attention heads (must divide ``embed_dim``).
        mlp_ratio: MLP hidden width over ``embed_dim``.
        mla_streams: encoder layers the MLA decoder reads (evenly spaced, the last always among them).
        decoder_channels: width of the naive and PUP decoders.
        dropout: dropout in the transformer blocks.
    """

    def __init__(self, in_channels: int, num_classes: int, *, decoder: str = "naive", img_size: int = 256,
                 embed_dim: int = 192, depth: int = 6, heads: int = 3, mlp_ratio: float = 4,
                 mla_streams: int = 4, decoder_channels: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        self.num_classes = check_int("num_classes", num_classes)
        self.decoder_name = check_choice("decoder", decoder, DECODERS)
        check_int("img_size", img_size, PATCH)
        if img_size % PATCH:
            raise ValueError(f"img_size must be a multiple of {PATCH}, not {img_size}")
        check_int("embed_dim", embed_dim, 4)
        check_int("depth", depth)
        check_int("heads", heads)
        if embed_dim % heads:
            raise ValueError(f"heads ({heads}) must divide embed_dim ({embed_dim})")
        self.decoder: nn.Module
        if decoder == "mla":
            check_int("mla_streams", mla_streams, 1, depth)
            if embed_dim % 4:
                raise ValueError(f"the MLA decoder needs embed_dim divisible by 4, not {embed_dim}")
        check_int("decoder_channels", decoder_channels)
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, not {mlp_ratio}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        self.img_size = img_size
        self.hparams = {"decoder": decoder, "img_size": img_size, "embed_dim": embed_dim, "depth": depth,
                        "heads": heads, "mlp_ratio": mlp_ratio, "mla_streams": mla_streams,
                        "decoder_channels": decoder_channels, "dropout": float(dropout)}

        grid = img_size // PATCH
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, PATCH, stride=PATCH)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, heads, mlp_ratio, dropout) for _ in range(depth))
        if decoder == "mla":
            # evenly spaced, ending with the last block (24 blocks, 4 streams: blocks 6, 12, 18, 24)
            self.taps = [(m + 1) * depth // mla_streams - 1 for m in range(mla_streams)]
            self.decoder = MLADecoder(embed_dim, mla_streams, num_classes)
        else:
            self.taps = [depth - 1]
            layer = NaiveDecoder if decoder == "naive" else PUPDecoder
            self.decoder = layer(embed_dim, decoder_channels, num_classes)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in self.taps)

    def _positions(self, rows: int, cols: int) -> torch.Tensor:
        """Positional embeddings ``(1, rows*cols, C)`` for a token grid of this size."""
        pos: torch.Tensor = self.pos_embed
        if pos.shape[-2:] != (rows, cols):
            pos = F.interpolate(pos, size=(rows, cols), mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for H and W multiples of 16.

        Raises:
            ValueError: the input's height or width is not a multiple of 16.
        """
        check_input(f"SETR-{self.decoder_name}", x, self.in_channels)
        check_sizes(f"SETR-{self.decoder_name}", x, PATCH)
        height, width = x.shape[-2:]
        tokens = self.patch_embed(x)
        rows, cols = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2) + self._positions(rows, cols)
        features: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in self.taps:
                normed = self.norms[len(features)](tokens)
                features.append(normed.transpose(1, 2).reshape(x.shape[0], -1, rows, cols))
        logits = self.decoder(features)
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits

    def geometry(self) -> Geometry:
        """Patch 16, no shrink, not equivariant: gaussian blending, a 32-pixel halo, and a core tile that makes
        the window the training size."""
        # a tiny img_size (tests) would leave no core; one patch is the least that is still a tile
        core = max(PATCH, self.img_size - 2 * HALO)
        return Geometry(halo=HALO, multiple=PATCH, offset=0, shrink=0, default_tile=core, equivariant=False,
                        blend=BlendMode.GAUSSIAN)
