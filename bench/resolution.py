"""Benchmark: peak memory and time of a run that reads its input at half resolution, against the image size.

A model card that states a pixel size twice the input's makes the engine read every window of level 0
averaged down 2x on the fly (:class:`tileseg.engine.io.resample.ResampledRaster`: the synthetic input has
no overviews), tile that virtual grid, and write the mask back on the input's grid. Memory must stay flat
in the image size: the windows, the batch, one band of tile rows and the writer's strips, never the image.
Each run is a fresh process, so that its peak RSS (``ru_maxrss``) is its own. Prints a Markdown table.

    python -m bench.resolution                       # 4096², 10000², 20000² (about 10 minutes on 2 cores)
    python -m bench.resolution --sizes 2048,4096     # a quick look

The input: a tiled (512²), deflate-compressed 3-band uint8 GeoTIFF at 0.5 m in UTM, cheap content
(checkerboards of three periods), written strip by strip. The network: a padded U-Net (depth 2, base
width 4; random weights: speed and memory do not depend on training), 3 bands, 2 classes, card pixel size
1 m; fp32, no torch.compile, 2 torch threads, batch 4.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INPUT_PIXEL = 0.5  # metres
MODEL_PIXEL = 1.0  # metres: the model reads at half the input's resolution
TILE = 512
STRIP = 512  # rows written at a time when making the input


def make_model(folder: Path) -> Path:
    """A small padded U-Net whose card says it was trained at 1 m."""
    import torch

    from tileseg import models
    from tileseg.models.spec import ClassInfo, InputSpec, ModelSpec

    torch.manual_seed(0)
    net = models.build_model("unet", 3, 2, padding="same", depth=2, base=4)
    spec = ModelSpec(
        name="bench-1m",
        arch="unet",
        input=InputSpec(bands=3, mean=(0.5,) * 3, std=(0.25,) * 3, pixel_size=MODEL_PIXEL),
        classes=(ClassInfo(0, "background", "#000000"), ClassInfo(1, "object", "#ff0000")),
        geometry=net.geometry(),
    )
    return models.save(net, spec, folder / "bench-1m")


def make_image(path: Path, size: int) -> None:
    """A ``size``² tiled GeoTIFF at 0.5 m, written a strip at a time (never held whole)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000.0, 5000000.0, INPUT_PIXEL, INPUT_PIXEL),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        zlevel=1,
        bigtiff="if_safer",
    )
    cols = np.arange(size)
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, size, STRIP):
            rows = np.arange(top, min(top + STRIP, size))[:, None]
            bands = [
                (((rows // period) + (cols // period)) % 2 * 200 + 20).astype(np.uint8) for period in (16, 57, 300)
            ]
            dst.write(np.stack(bands), window=((top, top + len(rows)), (0, size)))


def child(spec: str) -> None:
    """Run one segmentation in this process and print its time, peak RSS and reading plan as JSON."""
    import torch

    from tileseg import models
    from tileseg.engine import SegmentOptions, segment

    args = json.loads(spec)
    torch.set_num_threads(2)
    model = models.load(args["model"])
    options = SegmentOptions(tile=TILE, precision="fp32", compile="off", batch=4)
    started = time.perf_counter()
    result = segment(model, args["image"], args["out"], options)
    seconds = time.perf_counter() - started
    plan = result.pixel_size.model_dump()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "level": plan["level"],
                "grid": plan["grid"],
                "resampled": plan["resampled"],
                "read_m": plan["read_pixel_size_m"],
                "pixels_read": plan["pixels_read"]["level_0"],
                "tiles": result.tiles_total,
            }
        )
    )


def measure(model: Path, image: Path, out: Path) -> dict:
    spec = json.dumps({"model": str(model), "image": str(image), "out": str(out)})
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", __spec__.name, "--child", spec], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        raise RuntimeError(f"the run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    """The processor's model name (Linux), else the platform's machine type."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,10000,20000", help="image sides, comma-separated")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    load = os.getloadavg()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the start")
    print("| input | read at | grid | tiles | time (s) | px/s (input) | peak RSS (MB) | level-0 px decoded |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="tileseg-bench-") as tmp:
        folder = Path(tmp)
        model = make_model(folder)
        for size in sizes:
            image = folder / f"in-{size}.tif"
            made = time.perf_counter()
            make_image(image, size)
            made = time.perf_counter() - made
            r = measure(model, image, folder / f"mask-{size}.tif")
            image.unlink()
            (folder / f"mask-{size}.tif").unlink()
            grid = f"{r['grid'][1]}²" if r["grid"][0] == r["grid"][1] else f"{r['grid'][1]}x{r['grid'][0]}"
            how = "resampled" if r["resampled"] else f"level {r['level']}"
            print(
                f"| {size}² at {INPUT_PIXEL} m | {r['read_m']:.3f} m ({how}) | {grid} | {r['tiles']} | "
                f"{r['seconds']:.1f} | {size * size / r['seconds'] / 1e6:.2f} M | {r['peak_mb']:.0f} | "
                f"{r['pixels_read'] / 1e6:.0f} M |",
                flush=True,
            )
            print(f"<!-- input written in {made:.1f} s; load average now {os.getloadavg()[0]:.1f} -->", flush=True)


if __name__ == "__main__":
    main()
