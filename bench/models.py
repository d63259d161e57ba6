"""The README's model table: every installed model's parameters, file size, held-out metrics, CPU
throughput at its default tile, and default blend mode.

    python -m bench.models                 # all installed models, a 2048^2 input each
    python -m bench.models --size 1024 unet-em
    python -m bench.models --no-evaluate   # the card's metrics only, no re-measurement

Throughput is `segment()` end to end (read, tile, run, stitch, write a mask GeoTIFF) on a mirrored mosaic of
a real image with the model's band count, at the precision its card allows, over the whole input's pixels.

The held-out metrics are those of the card (measured at the end of training on the shipped fp16 weights,
fp32 arithmetic, each core kept whole) and, unless ``--no-evaluate``, measured again here the way users
run the model: every validation image that the card names, read from the shared data, through
`segment()` with the default options (default tile and blend, the card's precision).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TILESEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCES = {1: DATA / "isbi2012" / "test" / "images" / "0.png", 3: DATA / "geotiff" / "cogeo.tif"}
DATA_FOLDERS = {"isbi2012": DATA / "isbi2012", "dubai": DATA / "dubai_aerial"}  # a card's data set, on disk


def mosaic(source: Path, target: Path, size: int) -> None:
    """A ``size`` x ``size`` GeoTIFF of ``source`` mirrored tile after tile."""
    with rasterio.open(source) as src:
        data = src.read()
    bands, h, w = data.shape
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": data.dtype.name,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }
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
            parts.append(
                f"{label} {m[key]:.{digits}f}" + (f" (majority {baseline:.{digits}f})" if baseline is not None else "")
            )
    return ", ".join(parts) or "—"


def evaluate_served(model, folder: Path) -> dict | None:
    """Metrics of ``model`` on its card's validation split, every image through ``segment()`` as users run it;
    None when the card names no data set that is here."""
    from tileseg.engine import SegmentOptions, segment
    from tileseg.training.data import IGNORE_INDEX, read_mask
    from tileseg.training.scores import confusion_matrix, summarize
    from tileseg.training.sources import open_source

    data = model.card.get("data", {})
    root = DATA_FOLDERS.get(data.get("dataset"))
    if root is None or not root.is_dir() or not data.get("val_images"):
        return None
    source = open_source(data["dataset"], root)
    wanted = set(data["val_images"])
    pairs = [p for p in source.val if p.name in wanted]
    if {p.name for p in pairs} != wanted:
        raise SystemExit(
            f"{model.card['name']}: the card's validation images "
            f"{sorted(wanted - {p.name for p in pairs})} are not in {root}'s validation split"
        )
    classes = model.spec.classes
    to_channel = np.full(65536, IGNORE_INDEX, dtype=np.uint8)  # mask value (class index) -> channel
    to_channel[[c.index for c in classes]] = np.arange(len(classes))
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for pair in pairs:
        out = folder / "served.tif"
        segment(model, pair.image, out, SegmentOptions())
        with rasterio.open(out) as dst:
            predicted = to_channel[dst.read(1)]
        cm += confusion_matrix(predicted, source.lut[read_mask(pair.mask)], len(classes))
    return summarize(cm, [c.name for c in classes])


def main() -> None:
    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # ISBI PNGs carry no georeferencing
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="models (default: every installed one)")
    parser.add_argument("--size", type=int, default=2048, help="side of the input mosaic")
    parser.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the held-out metrics again through segment() (default: on)",
    )
    args = parser.parse_args()

    import torch

    from tileseg import models
    from tileseg.engine import SegmentOptions, segment

    names = args.names or models.available()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.size}², segment() end to end\n")
    served = " | served: mIoU / pixel error" if args.evaluate else ""
    print(f"| model | params | file | held-out metrics (card){served} | CPU Mpx/s (default tile, precision) | blend |")
    print("|---|---|---|---|---|---|" + ("---|" if args.evaluate else ""))
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
            again = ""
            if args.evaluate:
                found = evaluate_served(model, Path(tmp))
                again = f" {found['miou']:.3f} / {found['pixel_error']:.4f} |" if found else " — |"
            print(
                f"| `{name}` | {params / 1e6:.2f} M | {size_mb:.1f} MB | {metrics_text(model.card)} |{again} "
                f"{args.size**2 / seconds / 1e6:.2f} (tile {result.runtime.tile}, "
                f"{result.runtime.precision}) | {result.runtime.blend} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
