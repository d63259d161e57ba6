"""The README's model table: every installed model's parameters, file size, held-out metrics from its card,
CPU throughput at its default tile, and default blend mode.

    python bench/models.py                 # all installed models, a 2048^2 input each
    python bench/models.py --size 1024 unet-em

Throughput is `segment()` end to end (read, tile, run, stitch, write a mask GeoTIFF) on a mirrored mosaic of
a real image with the model's band count, at the precision its card allows, over the whole input's pixels.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("TILESEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCES = {1: DATA / "isbi2012" / "test" / "images" / "0.png", 3: DATA / "geotiff" / "cogeo.tif"}


def mosaic(source: Path, target: Path, size: int) -> None:
    """A ``size`` x ``size`` GeoTIFF of ``source`` mirrored tile after tile."""
    with rasterio.open(source) as src:
        data = src.read()
    bands, h, w = data.shape
    profile = {"driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": data.dtype.name,
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    with rasterio.open(target, "w", **profile) as dst:
        for i, y in enumerate(range(0, size, h)):
            for j, x in enumerate(range(0, size, w)):
                block = data[:, :: (-1) ** i, :: (-1) ** j][:, : size - y, : size - x]
                dst.write(np.ascontiguousarray(block), window=Window(x, y, block.shape[2], block.shape[1]))


def metrics_text(card: dict) -> str:
    """The card's held-out numbers, each beside the majority-class baseline's."""
    m = card.get("metrics", {})
    parts = []
    for key, label, digits in (("miou", "mIoU", 3), ("pixel_error", "pixel error", 4)):
        if key in m:
            baseline = m.get(f"majority_baseline_{key}")
            parts.append(f"{label} {m[key]:.{digits}f}" + (f" (majority {baseline:.{digits}f})" if baseline is not None else ""))
    return ", ".join(parts) or "—"


def main() -> None:
    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # ISBI PNGs carry no georeferencing
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="models (default: every installed one)")
    parser.add_argument("--size", type=int, default=2048, help="side of the input mosaic")
    args = parser.parse_args()

    import torch

    import models
    from service.engine import SegmentOptions, segment

    names = args.names or models.available()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.size}², "
          f"segment() end to end\n")
    print("| model | params | file | held-out metrics | CPU Mpx/s (default tile, precision) | blend |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        inputs: dict[int, Path] = {}
        for name in names:
            model = models.load(name)
            spec = model.spec
            bands = spec.input.bands
            if bands not in inputs:
                inputs[bands] = Path(tmp) / f"in{bands}.tif"
                mosaic(SOURCES[bands], inputs[bands], args.size)
            out = Path(tmp) / "mask.tif"
            segment(model, inputs[bands], out, SegmentOptions())  # warm-up: first-call allocations
            start = time.perf_counter()
            result = segment(model, inputs[bands], out, SegmentOptions())
            seconds = time.perf_counter() - start
            params = sum(p.numel() for p in model.parameters())
            size_mb = model.checkpoint_path.stat().st_size / 1e6
            print(f"| `{name}` | {params / 1e6:.2f} M | {size_mb:.1f} MB | {metrics_text(model.card)} | "
                  f"{args.size**2 / seconds / 1e6:.2f} (tile {result.settings['tile']}, "
                  f"{result.settings['precision']}) | {result.settings['blend']} |", flush=True)


if __name__ == "__main__":
    main()
