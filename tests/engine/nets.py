"""Small networks with known geometry for the engine's tests, saved through the real checkpoint code.

* ``ShiftNet``: a known answer. Input values ``v`` (uint8 scaled by 255) come back as the class index of
  the pixel ``(dy, dx)`` away, so the stitched mask is the mirror-padded input, shifted: any error in the
  mirror padding, the crop or the placement of a tile shows.
* ``PoolNet``: padded convolutions with two poolings and nearest upsampling (stride 4, halo 16).
* ``ValidNet``: a depth-3 valid-convolution U-Net (output smaller than input, shrink 44, sizes = 4 mod 8).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tileseg import models
from tileseg.models.base import SegmentationNet
from tileseg.models.registry import ARCHITECTURES
from tileseg.models.spec import ClassInfo, Geometry, InputSpec, ModelSpec


class ShiftNet(SegmentationNet):
    def __init__(self, in_channels, num_classes, *, dy=3, dx=-5, halo=8, multiple=4, offset=0, shrink=0):
        super().__init__()
        self.hparams = dict(dy=dy, dx=dx, halo=halo, multiple=multiple, offset=offset, shrink=shrink)
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(1))  # a checkpoint needs at least one tensor

    def geometry(self) -> Geometry:
        h = self.hparams
        return Geometry(
            halo=h["halo"],
            multiple=h["multiple"],
            offset=h["offset"],
            shrink=h["shrink"],
            default_tile=16,
            equivariant=True,
        )

    def forward(self, x):
        h = self.hparams
        s = h["shrink"]
        for size in x.shape[-2:]:
            if (size - 2 * s) % h["multiple"] != h["offset"]:
                raise ValueError(f"window {size} breaks the geometry")
        values = torch.round(x[:, :1] * 255 + self.anchor)
        values = torch.roll(values, shifts=(-h["dy"], -h["dx"]), dims=(2, 3))
        if s:
            values = values[:, :, s:-s, s:-s]
        k = torch.arange(self.num_classes, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return -((values - k) ** 2)


class PoolNet(SegmentationNet):
    def __init__(self, in_channels, num_classes, *, width=4):
        super().__init__()
        self.hparams = dict(width=width)
        c = width
        self.c1 = nn.Conv2d(in_channels, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)
        self.c3 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.c4 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.head = nn.Conv2d(c, num_classes, 1)

    def geometry(self) -> Geometry:
        return Geometry(halo=16, multiple=4, default_tile=32, equivariant=True)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = F.max_pool2d(F.relu(self.c2(F.max_pool2d(a, 2))), 2)
        b = F.interpolate(F.relu(self.bn(self.c3(b))), scale_factor=4, mode="nearest")
        return self.head(F.relu(self.c4(torch.cat([a, b], 1))))


class ValidNet(SegmentationNet):
    def __init__(self, in_channels, num_classes, *, width=4, depth=3):
        super().__init__()
        self.hparams = dict(width=width, depth=depth)
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            self._pair(in_channels if i == 0 else chans[i - 1], chans[i]) for i in range(depth + 1)
        )
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(depth))
        self.dec = nn.ModuleList(self._pair(2 * chans[i], chans[i]) for i in range(depth))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    @staticmethod
    def _pair(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3), nn.ReLU(), nn.Conv2d(cout, cout, 3), nn.ReLU())

    def geometry(self) -> Geometry:
        d = self.depth
        shrink = 4 * (2**d - 1) + 2 ** (d + 1)
        offset = (-(4 * (2**d - 1))) % 2**d  # valid outputs are 2^d * c - 4 * (2^d - 1)
        return Geometry(halo=shrink, multiple=2**d, offset=offset, shrink=shrink, default_tile=32, equivariant=True)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                if x.shape[-1] % 2 or x.shape[-2] % 2:
                    raise ValueError(f"odd size {tuple(x.shape[-2:])} before pooling")
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for i in reversed(range(self.depth)):
            x = self.up[i](x)
            skip = skips[i]
            dy, dx = (skip.shape[-2] - x.shape[-2]) // 2, (skip.shape[-1] - x.shape[-1]) // 2
            x = self.dec[i](torch.cat([skip[:, :, dy : dy + x.shape[-2], dx : dx + x.shape[-1]], x], 1))
        return self.head(x)


TEST_ARCHITECTURES = {"test-shift": ShiftNet, "test-pool": PoolNet, "test-valid": ValidNet}


def register() -> None:
    """Make the test architectures loadable by name (``tests/engine/conftest.py`` does it per test)."""
    ARCHITECTURES.update(TEST_ARCHITECTURES)


def unregister() -> None:
    for name in TEST_ARCHITECTURES:
        ARCHITECTURES.pop(name, None)


def checkpoint(
    tmp_path,
    arch: str,
    bands: int = 1,
    classes: int = 3,
    name: str | None = None,
    dtypes=None,
    pixel_size=None,
    precision="fp32",
    seed=0,
    **hparams,
):
    """Build a network (random weights, randomised BatchNorm statistics), save it through the checkpoint
    code and return the loaded model."""
    torch.manual_seed(seed)
    net = ARCHITECTURES[arch](in_channels=bands, num_classes=classes, **hparams)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    name = name or f"{arch}-{bands}b{classes}c"
    palette = ["#000000", "#ff0000", "#00ff00", "#0000ff", "#ffff00", "#00ffff", "#ff00ff", "#ffffff"]
    spec = ModelSpec(
        name=name,
        arch=arch,
        input=InputSpec(
            bands=bands,
            mean=(0.0,) * bands,
            std=(1.0,) * bands,
            pixel_size=pixel_size,
            **({"dtypes": tuple(dtypes)} if dtypes else {}),
        ),
        classes=tuple(ClassInfo(i, f"class{i}", palette[i % len(palette)]) for i in range(classes)),
        geometry=net.geometry(),
        precision=precision,
    )
    path = models.save(net, spec, tmp_path / "weights" / name, training={"note": "random weights, tests only"})
    return models.load(path)
