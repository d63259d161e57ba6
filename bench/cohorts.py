"""Benchmark: many inputs in one run (``tileseg segment INPUT... --out-dir DIR``) against one ``tileseg segment
IN OUT`` command per input.

Inputs: crops of the ISBI 2012 EM test volume (the shipped ``unet-em``'s own kind of data, one band uint8),
written as GeoTIFFs: ``--small`` images of ``--small-size``² and ``--large`` mosaics of ``--large-size``² (the
test images mirrored at every copy's edge). The model runs fp32, PyTorch eager, its tile and batch fixed, so
every run takes the same path; the tuner's cache is warmed by one untimed run first, so no run measures.

Measured, wall clock, per set of inputs:

1. one ``--out-dir`` run over every input (one process: Python, torch and the model loaded once);
2. separate commands, one per input, run one after the other; for the small set only the first
   ``--separate`` of them are run and the time is extrapolated to all (the table says so).

    python -m bench.cohorts                     # about 4 minutes on 2 cores
    python -m bench.cohorts --small 20 --separate 5 --large 1
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import DATA, tileseg

FIXED = ["--model", "unet-em", "--precision", "fp32", "--runtime", "torch", "--compile", "off", "--tile", "192",
         "--batch", "2", "-q"]  # fmt: skip


def em_images() -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p)) for p in sorted((DATA / "isbi2012" / "test" / "images").glob("*.png"))]


def write(path: Path, data: np.ndarray) -> Path:
    import rasterio

    height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8", "tiled": True}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[None])
    return path


def small_set(folder: Path, count: int, size: int) -> list[Path]:
    images, paths = em_images(), []
    folder.mkdir(parents=True)
    for i in range(count):
        image = images[i % len(images)]
        shift = i // len(images)  # a further copy of an image: another crop of it
        y, x = (shift * size) % (image.shape[0] - size), (shift * 97) % (image.shape[1] - size)
        paths.append(write(folder / f"small{i:03d}.tif", np.ascontiguousarray(image[y : y + size, x : x + size])))
    return paths


def large_set(folder: Path, count: int, size: int) -> list[Path]:
    images, paths = em_images(), []
    folder.mkdir(parents=True)
    for i in range(count):
        image = images[i % len(images)]
        reps = -(-size // image.shape[0])
        mosaic = np.pad(image, [(0, image.shape[0] * (reps - 1)), (0, image.shape[1] * (reps - 1))], mode="symmetric")
        paths.append(write(folder / f"large{i}.tif", np.ascontiguousarray(mosaic[:size, :size])))
    return paths


def timed(args: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(tileseg("segment", *args), check=True, capture_output=True)
    return time.perf_counter() - began


def measure(paths: list[Path], work: Path, separate: int) -> tuple[float, float, int]:
    """(seconds of one --out-dir run over ``paths``, seconds of separate commands for all of them (extrapolated
    from the first ``separate``), how many separate commands ran)."""
    batch = timed([str(p) for p in paths] + ["--out-dir", str(work / "batch"), *FIXED])
    ran = min(separate, len(paths))
    single = sum(timed([str(p), str(work / f"single-{p.stem}.tif"), *FIXED]) for p in paths[:ran])
    return batch, single * len(paths) / ran, ran


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100, help="small images (default 100)")
    parser.add_argument("--small-size", type=int, default=192)
    parser.add_argument("--separate", type=int, default=20, help="separate commands run for the small set")
    parser.add_argument("--large", type=int, default=2, help="large images (default 2)")
    parser.add_argument("--large-size", type=int, default=2048)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="tileseg-bench-cohorts-") as tmp:
        work = Path(tmp)
        small = small_set(work / "small", args.small, args.small_size)
        large = large_set(work / "large", args.large, args.large_size)
        timed([str(small[0]), str(work / "warm.tif"), *FIXED])  # the tuner's cache, once
        rows = []
        for label, paths, separate in (
            (f"{args.small} x {args.small_size}²", small, args.separate),
            (f"{args.large} x {args.large_size}²", large, args.large),
        ):
            folder = Path(tempfile.mkdtemp(dir=work))
            batch, single, ran = measure(paths, folder, separate)
            rows.append((label, len(paths) / batch, len(paths) / single, single / batch, ran, len(paths)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU: {cpu_name()}, {cores} cores for this process, torch {torch.__version__}; unet-em fp32 eager")
    print(f"{'inputs':<14} {'--out-dir img/s':>16} {'separate img/s':>15} {'speed-up':>9}  separate commands run")
    for label, fast, slow, ratio, ran, total in rows:
        note = f"{ran} of {total}, extrapolated" if ran < total else f"all {total}"
        print(f"{label:<14} {fast:>16.3f} {slow:>15.3f} {ratio:>8.2f}x  {note}")


if __name__ == "__main__":
    main()
