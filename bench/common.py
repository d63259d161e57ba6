"""What the service and scale-out benchmarks share: a random-weight U-Net saved as a checkpoint, a mosaic of
the Blue Marble scene as a large GeoTIFF, and the ``tileseg`` command line of this interpreter."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DATA = Path(os.environ.get("TILESEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SOURCE = DATA / "large" / "bmng_5400x2700_epsg4326_tiled.tif"
ARCH = {"arch": "unet", "padding": "same", "depth": 4, "base": 16}
CLASSES = 6


def tileseg(*args: str) -> list[str]:
    """The command line of ``tileseg ARGS`` with this interpreter (the benches run from the source tree)."""
    return [sys.executable, "-c", "from tileseg.cli import cli; cli()", *args]


def make_model(folder: Path, tile: int) -> Path:
    import torch

    from tileseg import models
    from tileseg.models.spec import ClassInfo, InputSpec, ModelSpec

    torch.manual_seed(0)
    hparams = {k: v for k, v in ARCH.items() if k != "arch"}
    net = models.build_model(ARCH["arch"], 3, CLASSES, **hparams)
    geometry = net.geometry()
    from dataclasses import replace

    spec = ModelSpec(
        name="bench-unet",
        arch=ARCH["arch"],
        input=InputSpec(bands=3, mean=(0.5,) * 3, std=(0.25,) * 3),
        classes=tuple(ClassInfo(i, f"c{i}", "#808080") for i in range(CLASSES)),
        geometry=replace(geometry, default_tile=tile),
    )
    return models.save(net, spec, folder / "bench-unet")


def make_image(
    path: Path, size: int, source: Path = SOURCE, bands: int | None = None, width: int | None = None
) -> None:
    """A ``size`` high and ``width`` (default ``size``) wide mosaic of a real scene (default the Blue Marble;
    ``bands``: its first bands, or its first band repeated), mirrored at every copy's edge, tiled 512 and
    compressed."""
    width = width or size
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        scene = src.read()
        bands = bands or src.count
        scene = scene[:bands] if bands <= src.count else np.repeat(scene[:1], bands, axis=0)
        profile = {**src.profile, "count": bands, "width": width, "height": size, "tiled": True}
        profile.update(blockxsize=512, blockysize=512, compress="deflate")
        profile["photometric"] = "RGB" if bands == 3 else "MINISBLACK"
    _, h, w = scene.shape
    with rasterio.open(path, "w", **profile) as dst:
        for i, y in enumerate(range(0, size, h)):
            for j, x in enumerate(range(0, width, w)):
                block = scene[:, :: (-1) ** i, :: (-1) ** j][:, : size - y, : width - x]
                dst.write(np.ascontiguousarray(block), window=Window(x, y, block.shape[2], block.shape[1]))
