"""Benchmark: `tileseg segment` against MONAI's sliding_window_inference and the bare forward pass.

Same network, same image, input read and mask GeoTIFF written with rasterio on every side; each run in
a fresh process so that its peak RSS is its own. Prints a Markdown table and the ratios the README quotes.

    python bench/engine.py                      # the README's table (about 20-25 minutes on 2 cores)
    python bench/engine.py --sizes 1024 --memory-sizes 1024,2048 --monai-memory-sizes 1024   # a quick look

The network: a padded U-Net (depth 4, base width 16, BatchNorm; 1.9 M parameters), 3 bands, 6 classes,
random weights (speed and memory do not depend on training). Images are mosaics of a real scene
(NASA Blue Marble from the shared data), mirrored to the size asked, tiled and compressed.
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
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("TILESEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCE = DATA / "large" / "bmng_5400x2700_epsg4326_tiled.tif"
ARCH = {"arch": "unet", "padding": "same", "depth": 4, "base": 16}
CLASSES = 6
BATCH = 4


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


def make_image(path: Path, size: int) -> None:
    """A ``size`` x ``size`` mosaic of the Blue Marble scene, mirrored, tiled 512 and compressed."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(SOURCE) as src:
        scene = src.read()
        profile = {
            **src.profile,
            "width": size,
            "height": size,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            "compress": "deflate",
            "photometric": "RGB",
        }
        _, h, w = scene.shape
        with rasterio.open(path, "w", **profile) as dst:
            for i, y in enumerate(range(0, size, h)):
                for j, x in enumerate(range(0, size, w)):
                    block = scene[:, :: (-1) ** i, :: (-1) ** j][:, : size - y, : size - x]
                    dst.write(np.ascontiguousarray(block), window=Window(x, y, block.shape[2], block.shape[1]))


# ---- the measured runs, each in its own process -------------------------------------------------------------


def run_ours(model_path: str, image: str, out: str, tile: int, precision: str) -> dict:
    from tileseg import models
    from tileseg.engine import SegmentOptions, segment

    model = models.load(model_path)
    start = time.perf_counter()
    result = segment(model, image, out, SegmentOptions(tile=tile, batch=BATCH, precision=precision))
    return {"seconds": time.perf_counter() - start, "tiles": result.tiles_total, "window": result.settings["window"]}


def run_bare(model_path: str, image: str, out: str, tile: int, precision: str) -> dict:
    """The network alone over the same number of windows, in the same format and precision."""
    import math

    import rasterio
    import torch

    from tileseg import models
    from tileseg.engine import SegmentOptions, tile_settings

    model = models.load(model_path)
    settings = tile_settings(model.spec, SegmentOptions(tile=tile, batch=BATCH))
    with rasterio.open(image) as src:
        tiles = math.ceil(src.height / settings.step) * math.ceil(src.width / settings.step)
    x = torch.randn(BATCH, 3, settings.window, settings.window).contiguous(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for _ in range(math.ceil(tiles / BATCH)):
            model(x).argmax(1)
    return {"seconds": time.perf_counter() - start, "tiles": tiles, "window": settings.window}


def run_monai(model_path: str, image: str, out: str, window: int, overlap: float, mode: str, fast: bool) -> dict:
    """MONAI as its users run it: the whole image and its logits in memory, NCHW fp32 (``fast``: the same
    network in channels_last with bf16 autocast, to separate the method from the number format)."""
    import numpy as np
    import rasterio
    import torch
    from monai.inferers import sliding_window_inference

    from tileseg import models

    model = models.load(model_path)
    if not fast:
        model = model.to(memory_format=torch.contiguous_format)
    spec = model.spec
    start = time.perf_counter()
    with rasterio.open(image) as src:
        data = src.read().astype(np.float32) / 255
        profile = {
            **src.profile,
            "count": 1,
            "dtype": "uint8",
            "nodata": 255,
            "compress": "deflate",
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
        }
    mean = np.asarray(spec.input.mean, np.float32)[:, None, None]
    std = np.asarray(spec.input.std, np.float32)[:, None, None]
    x = torch.from_numpy((data - mean) / std)[None]
    del data

    def predictor(batch):
        if fast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(batch.contiguous(memory_format=torch.channels_last)).float()
        return model(batch)

    with torch.inference_mode():
        logits = sliding_window_inference(
            x, (window, window), BATCH, predictor, overlap=overlap, mode=mode, padding_mode="reflect"
        )
        mask = logits.argmax(1)[0].to(torch.uint8).numpy()
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(mask, 1)
    return {"seconds": time.perf_counter() - start}


RUNNERS = {"ours": run_ours, "bare": run_bare, "monai": run_monai}


def measure(kind: str, **kwargs) -> dict:
    """Run one measurement in a fresh process; returns its result with its peak RSS in MB."""
    done = subprocess.run(
        [sys.executable, __file__, "--run", json.dumps({"kind": kind, **kwargs})],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if done.returncode:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _window(model_path: str, tile: int) -> int:
    from tileseg import models
    from tileseg.engine import SegmentOptions, tile_settings

    return tile_settings(models.load(model_path).spec, SegmentOptions(tile=tile)).window


def child(spec: str) -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    args = json.loads(spec)
    result = RUNNERS[args.pop("kind")](**args)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, default=384, help="our core (default 384: 3.4x the halo of 112)")
    parser.add_argument("--sizes", default="4096", help="image sides for the speed comparison")
    parser.add_argument("--memory-sizes", default="2048,8192,20000", help="image sides for our memory curve")
    parser.add_argument("--monai-memory-sizes", default="2048,8192", help="image sides for MONAI's memory curve")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args()
    if args.run:
        child(args.run)
        return

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = str(make_model(tmp, args.tile))
        from tileseg import models

        geometry = models.load(model_path).spec.geometry
        print(
            f"network: U-Net (same padding, depth 4, base 16), {CLASSES} classes; halo {geometry.halo}, "
            f"core {args.tile} ({args.tile / geometry.halo:.2f}x the halo); precision {args.precision}; "
            f"torch {torch.__version__}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
            flush=True,
        )
        images = {}

        def image(size: int) -> str:
            if size not in images:
                images[size] = str(tmp / f"img{size}.tif")
                make_image(Path(images[size]), size)
            return images[size]

        def record(name, size, result):
            mpx = size * size / 1e6
            row = {
                "run": name,
                "size": size,
                "seconds": result["seconds"],
                "mpx_s": mpx / result["seconds"],
                "peak_mb": result["peak_mb"],
            }
            rows.append(row)
            print(
                f"| {name} | {size}² | {row['seconds']:.1f} | {row['mpx_s']:.2f} | {row['peak_mb']:.0f} |", flush=True
            )
            return row

        print("\n| run | image | seconds | Mpx/s | peak RSS MB |\n|---|---|---|---|---|", flush=True)
        out = str(tmp / "out.tif")
        for size in [int(v) for v in args.sizes.split(",") if v]:
            src = image(size)
            ours = record(
                "tileseg segment (crop, exact halo)",
                size,
                measure("ours", model_path=model_path, image=src, out=out, tile=args.tile, precision=args.precision),
            )
            measured = measure(
                "bare", model_path=model_path, image=src, out=out, tile=args.tile, precision=args.precision
            )
            bare = record("bare forward pass, same windows", size, measured)
            win = measured["window"]
            equal = record(
                "MONAI, step = our core (fp32 NCHW)",
                size,
                measure(
                    "monai",
                    model_path=model_path,
                    image=src,
                    out=out,
                    window=win,
                    overlap=(win - args.tile) / win - 1e-6,
                    mode="constant",
                    fast=False,
                ),
            )
            equal_fast = record(
                "MONAI, step = our core (bf16 channels_last)",
                size,
                measure(
                    "monai",
                    model_path=model_path,
                    image=src,
                    out=out,
                    window=win,
                    overlap=(win - args.tile) / win - 1e-6,
                    mode="constant",
                    fast=True,
                ),
            )
            seamless = record(
                "MONAI, gaussian, overlap 0.5 (fp32 NCHW)",
                size,
                measure(
                    "monai",
                    model_path=model_path,
                    image=src,
                    out=out,
                    window=win,
                    overlap=0.5,
                    mode="gaussian",
                    fast=False,
                ),
            )
            seamless_fast = record(
                "MONAI, gaussian, overlap 0.5 (bf16 channels_last)",
                size,
                measure(
                    "monai",
                    model_path=model_path,
                    image=src,
                    out=out,
                    window=win,
                    overlap=0.5,
                    mode="gaussian",
                    fast=True,
                ),
            )
            print(
                f"\nratios at {size}²: vs MONAI equal work {equal['seconds'] / ours['seconds']:.2f}x "
                f"(same format: {equal_fast['seconds'] / ours['seconds']:.2f}x); vs MONAI seam-free "
                f"{seamless['seconds'] / ours['seconds']:.2f}x (same format: "
                f"{seamless_fast['seconds'] / ours['seconds']:.2f}x); efficiency (bare / end-to-end) "
                f"{bare['seconds'] / ours['seconds']:.2f}\n",
                flush=True,
            )
        print("| run | image | seconds | Mpx/s | peak RSS MB |\n|---|---|---|---|---|", flush=True)
        for size in [int(v) for v in args.memory_sizes.split(",") if v]:
            record(
                "tileseg segment (memory)",
                size,
                measure(
                    "ours", model_path=model_path, image=image(size), out=out, tile=args.tile, precision=args.precision
                ),
            )
        for size in [int(v) for v in args.monai_memory_sizes.split(",") if v]:
            win = _window(model_path, args.tile)
            record(
                "MONAI gaussian 0.5 (memory, bf16 channels_last)",
                size,
                measure(
                    "monai",
                    model_path=model_path,
                    image=image(size),
                    out=out,
                    window=win,
                    overlap=0.5,
                    mode="gaussian",
                    fast=True,
                ),
            )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
