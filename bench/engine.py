"""Benchmark: `tileseg segment` with its defaults against the bare forward pass it chose, and against MONAI.

    python -m bench.engine                          # unet-aerial, 3072² and 8192² (about 10 minutes on 2 cores)
    python -m bench.engine --sizes 2048 --model unet-em

Each run in a fresh process, so that its peak RSS is its own; the image is a mosaic of a real aerial scene
(``geotiff/cogeo.tif`` from the shared data, mirrored to the size asked, tiled and compressed), with the
model's band count. Rows:

* ``tileseg, first run``: the defaults with an empty tuner cache: the search included.
* ``tileseg, run k``: where the first run's bound cut its window search short, the runs that went on with it,
  until one finds it done.
* ``tileseg, defaults``: the defaults again (the cache answers): what every later run costs. Seconds are
  ``segment()`` alone, start-up (imports, model load) aside.
* ``bare forward, chosen``: the runtime, window and batch the defaults chose, run on random windows, as
  many as the run has tiles: the ceiling of the pipeline.
* ``--ceiling``: the fastest bare forward this machine allows, whatever the tuner chose: every runtime and
  precision it may choose from that passes the tile-invariance check, at windows up to 2352, scanned once; then
  for each image its fastest runtime and window is timed again beside the runs, and the ratio is the defaults'
  output rate over that one.

The defaults and the bare forwards run in turn, ``--repeat`` times (default 2), the best of each kept: the
speed of a shared VM drifts by a quarter over minutes, and a ratio of runs minutes apart measures the drift.
* ``MONAI as its users run it``: ``sliding_window_inference`` with the whole image and its logits in memory,
  NCHW fp32, window 512, overlap 0.5, gaussian, batch 4, reflect padding, writing the same GeoTIFF.

Then the ratios the README quotes: bare / defaults (target >= 0.85, start-up aside: the first call at the run's
window, which prepares an exported program for that shape, is measured in the bare run and set apart) and
MONAI / defaults (target >= 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import make_image

DATA = Path(os.environ.get("TILESEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SOURCE = DATA / "geotiff" / "cogeo.tif"


# ---- the measured runs, each in its own process -------------------------------------------------------------


def run_ours(model: str, image: str, out: str) -> dict:
    from tileseg import models
    from tileseg.engine import segment
    from tileseg.engine.runtime.device import configure_threads

    configure_threads()
    net = models.load(model)
    start = time.perf_counter()
    result = segment(net, image, out)
    return {"seconds": time.perf_counter() - start, "tiles": result.tiles_total, **result.runtime.tuning}


def run_bare(model: str, image: str, out: str, fp16: bool = False) -> dict:
    """The chosen runtime at the chosen window and batch, alone, over as many windows as the run has tiles
    (``fp16``: eager fp16 autocast, channels_last, at the same window and batch: a GPU's plain reference)."""
    import math

    import rasterio
    import torch

    from tileseg import models
    from tileseg.engine import SegmentOptions, tile_settings
    from tileseg.engine.runtime.device import configure_threads
    from tileseg.engine.runtime.forward import run_forward
    from tileseg.engine.runtime.runtimes import Runtime
    from tileseg.engine.runtime.tuner import choose_runtime
    from tileseg.engine.tiling import TilePlan

    configure_threads()
    net = models.load(model)
    device = next(net.parameters()).device
    with rasterio.open(image) as src:
        shape = (src.height, src.width)
    choice = choose_runtime(net, device, SegmentOptions(), shape[0] * shape[1], shape[1])
    settings = tile_settings(net.spec, SegmentOptions(), shape, choice)
    tiles = len(TilePlan(settings, *shape))
    runtime = Runtime("fp16", True, "eager") if fp16 else choice.runtime
    x = torch.randn(settings.batch, net.spec.input.bands, settings.window, settings.window, device=device)
    with torch.inference_mode():
        start = time.perf_counter()
        run_forward(net, runtime, x, device)  # warm: the program and this shape prepared (start-up)
        prepare = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(math.ceil(tiles / settings.batch)):
            logits = run_forward(net, runtime, x, device)
        logits.cpu()  # the forward alone: an argmax over the channels of NCHW logits cost more than the forward
    return {"seconds": time.perf_counter() - start, "tiles": tiles, "runtime": runtime.label, "prepare": prepare}


CEILING_MAX_WINDOW = 2352
CEILING_SECONDS = 0.6  # timed calls per point


def run_ceiling(model: str, image: str, out: str) -> dict:
    """The fastest bare forward this machine allows: every runtime and precision the tuner may choose from
    (compilation aside) that is tile-invariant on the model, each at windows from the card's to
    :data:`CEILING_MAX_WINDOW` (cores a ladder of about 1.2x), in exact output pixels a second."""
    import math

    from tileseg import models
    from tileseg.engine.runtime.device import configure_threads
    from tileseg.engine.runtime.forward import release
    from tileseg.engine.runtime.path import invariance_error
    from tileseg.engine.runtime.runtimes import candidates
    from tileseg.engine.runtime.tuner import time_forward

    configure_threads()
    net = models.load(model)
    device = next(net.parameters()).device
    geometry = net.spec.geometry
    cores, core = [], geometry.default_tile
    while geometry.window(core) <= CEILING_MAX_WINDOW:
        cores.append(core)
        core = math.ceil(core * 1.2 / geometry.multiple) * geometry.multiple
    points = []
    for runtime in candidates(net.spec, device, compile="off"):
        try:
            why = invariance_error(net, runtime, device)
        except Exception as err:  # a runtime that cannot run this model: not a candidate
            why = f"fails: {type(err).__name__}"
        if why is not None:
            points.append({"runtime": runtime.label, "window": None, "mpx": 0.0, "note": why})
            continue
        for core in cores:
            seconds, _, _ = time_forward(net, runtime, geometry.window(core), 1, CEILING_SECONDS)
            window = geometry.window(core)
            points.append({"runtime": runtime.label, "core": core, "window": window, "mpx": core**2 / seconds / 1e6})
        release(net, [])
    best = max(points, key=lambda p: p["mpx"])
    per_runtime = {}
    for p in points:
        if p["mpx"] >= per_runtime.get(p["runtime"], {"mpx": -1.0})["mpx"]:
            per_runtime[p["runtime"]] = p
    return {"runtime": best["runtime"], "core": best["core"], "window": best["window"], "mpx": best["mpx"],
            "batch": 1, "per_runtime": list(per_runtime.values())}  # fmt: skip


def run_top(model: str, image: str, out: str, runtime: str, core: int) -> dict:
    """The bare forward of the ceiling's runtime and window, timed now (beside the run it is compared with: the
    shared VM's speed drifts by a quarter over minutes), in exact output pixels a second."""
    from tileseg import models
    from tileseg.engine.runtime.device import configure_threads
    from tileseg.engine.runtime.runtimes import candidates
    from tileseg.engine.runtime.tuner import time_forward

    configure_threads()
    net = models.load(model)
    device = next(net.parameters()).device
    chosen = next(r for r in candidates(net.spec, device, compile="off") if r.label == runtime)
    window = net.spec.geometry.window(core)
    seconds, _, _ = time_forward(net, chosen, window, 1, TOP_SECONDS)
    return {"runtime": runtime, "window": window, "mpx": core**2 / seconds / 1e6}


TOP_SECONDS = 3.0


def run_monai(model: str, image: str, out: str) -> dict:
    """MONAI as its users run it: the whole image and its logits in memory, NCHW fp32, window 512, overlap 0.5,
    gaussian, batch 4."""
    import numpy as np
    import rasterio
    import torch
    from monai.inferers import sliding_window_inference

    from tileseg import models
    from tileseg.engine.runtime.device import configure_threads

    configure_threads()
    net = models.load(model).to(memory_format=torch.contiguous_format)
    spec = net.spec
    start = time.perf_counter()
    with rasterio.open(image) as src:
        data = src.read().astype(np.float32) / 255
        profile = {**src.profile, "count": 1, "dtype": "uint8", "nodata": 255, "compress": "deflate"}
    mean = np.asarray(spec.input.mean, np.float32)[:, None, None]
    std = np.asarray(spec.input.std, np.float32)[:, None, None]
    x = torch.from_numpy((data - mean) / std)[None]
    del data
    with torch.inference_mode():
        logits = sliding_window_inference(x, (512, 512), 4, net, overlap=0.5, mode="gaussian", padding_mode="reflect")
        mask = logits.argmax(1)[0].to(torch.uint8).numpy()
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(mask, 1)
    return {"seconds": time.perf_counter() - start}


RUNNERS = {"ours": run_ours, "bare": run_bare, "monai": run_monai, "ceiling": run_ceiling, "top": run_top}


def measure(kind: str, env: dict[str, str], **kwargs) -> dict:
    """Run one measurement in a fresh process; returns its result with its peak RSS in MB and wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", __spec__.name, "--run", json.dumps({"kind": kind, **kwargs})],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    if done.returncode:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "wall": time.perf_counter() - started}


def child(spec: str) -> None:
    args = json.loads(spec)
    result = RUNNERS[args.pop("kind")](**args)
    from tileseg.engine.runtime.device import process_peak

    # the tuner's measurements reset the high-water mark that ru_maxrss reports: the process's own record
    result["peak_mb"] = (process_peak() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / (1 << 20)
    print(json.dumps(result))


def machine() -> str:
    import torch

    from tileseg.engine.runtime.device import configure_threads, describe_device

    configure_threads()
    d = describe_device(torch.device("cpu"))
    return f"{d['name']}, torch {torch.__version__} capability {d['capability']}, native bf16 {d['native_bf16']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="unet-aerial")
    parser.add_argument("--sizes", default="3072,8192", help="image sides, or WIDTHxHEIGHT (e.g. 100000x2048)")
    parser.add_argument("--monai-sizes", default="3072", help="sides MONAI runs at (its time and memory grow fast)")
    parser.add_argument("--fp16-bare", action="store_true", help="a GPU: add the bare eager fp16 forward")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="measure the fastest bare forward (every tile-invariant runtime and precision, windows to 2352)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of the defaults and the bare forwards, best kept")
    args = parser.parse_args()
    if args.run:
        child(args.run)
        return
    from tileseg.models import card_spec

    bands = card_spec(args.model).input.bands
    print(f"{args.model} on {machine()}, {os.cpu_count()} cores", flush=True)
    print("\n| run | image | seconds | Mpx/s | peak RSS MB | chosen |\n|---|---|---|---|---|---|", flush=True)
    ceiling: dict[str, dict] = {}  # the scan, once, before the first image
    labels = {"first": "tileseg, first run (search included)", "ours": "tileseg, defaults",
              "bare": "bare forward, chosen", "fp16": "bare forward, eager fp16",
              "monai": "MONAI as its users run it"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        env = {"TILESEG_CACHE_DIR": str(Path(tmp) / "cache")}
        for text in [v for v in args.sizes.split(",") if v]:
            width, size = (int(v) for v in text.split("x")) if "x" in text else (int(text), int(text))
            shown = f"{width}x{size}" if width != size else f"{size}²"
            image, out = str(Path(tmp) / f"img{text}.tif"), str(Path(tmp) / "out.tif")
            make_image(Path(image), size, SOURCE, bands, width)
            if args.ceiling and "ceiling" not in ceiling:  # a cache of its own: the first run must find none
                own = {"TILESEG_CACHE_DIR": str(Path(tmp) / "ceiling-cache")}
                ceiling["ceiling"] = measure("ceiling", own, model=args.model, image=image, out=out)
            rows = {"first": measure("ours", env, model=args.model, image=image, out=out)}
            # a window search cut short by its bound goes on in the runs that follow: each shown until it is done
            while list(rows.values())[-1].get("searching") and len(rows) < 12:
                labels[f"run{len(rows) + 1}"] = f"tileseg, run {len(rows) + 1} (its window search goes on)"
                rows[f"run{len(rows) + 1}"] = measure("ours", env, model=args.model, image=image, out=out)
            # the runs compared, in turn, best of --repeat each: the shared VM's speed drifts over minutes
            for _ in range(args.repeat):
                for name, kind in [("ours", "ours"), ("bare", "bare")] + [("top", "top")] * bool(ceiling):
                    extra = {}
                    if name == "top":
                        top = ceiling["ceiling"]
                        extra = {"runtime": top["runtime"], "core": top["core"]}
                    r = measure(kind, env, model=args.model, image=image, out=out, **extra)
                    best = rows.get(name)
                    if best is None or (r["mpx"] > best["mpx"] if name == "top" else r["seconds"] < best["seconds"]):
                        rows[name] = r
            for name, kind in [("fp16", "bare")] * args.fp16_bare + [("monai", "monai")] * (
                text in args.monai_sizes.split(",")
            ):
                extra = {"fp16": True} if name == "fp16" else {}
                rows[name] = measure(kind, env, model=args.model, image=image, out=out, **extra)
            for name, r in rows.items():
                if name == "top":
                    print(f"| fastest bare forward ({r['runtime']}, window {r['window']}) | {shown} | | "
                          f"{r['mpx']:.2f} | {r['peak_mb']:.0f} | timed beside the runs |", flush=True)  # fmt: skip
                    continue
                chosen = f"{r['runtime']} window {r['window']} x{r['batch']}" if "window" in r else r.get("runtime", "")
                mpx = width * size / 1e6 / r["seconds"]
                print(
                    f"| {labels[name]} | {shown} | {r['seconds']:.1f} | {mpx:.2f} | {r['peak_mb']:.0f} | {chosen} |",
                    flush=True,
                )
            ours = rows["ours"]["seconds"]
            bare = rows["bare"]
            line = f"\nat {shown} (best of {args.repeat}): bare forward / defaults {bare['seconds'] / ours:.2f}"
            line += f" (start-up aside, the first call at the run's window {bare['prepare']:.1f} s: "
            line += f"{bare['seconds'] / (ours - bare['prepare']):.2f})"
            if "top" in rows:
                top = rows["top"]
                line += f"; defaults / fastest bare forward ({top['runtime']}, window {top['window']}: "
                line += f"{top['mpx']:.2f} Mpx/s) {width * size / 1e6 / ours / top['mpx']:.2f}"
            if "fp16" in rows:
                line += f"; defaults / bare fp16 forward {rows['fp16']['seconds'] / ours:.2f}"
            if "monai" in rows:
                line += f"; defaults vs MONAI {rows['monai']['seconds'] / ours:.2f}x faster"
            print(line + "\n", flush=True)
    if "ceiling" in ceiling:
        print("| runtime | fastest window | Mpx/s |\n|---|---|---|")
        for p in ceiling["ceiling"]["per_runtime"]:
            print(f"| {p['runtime']} | {p['window'] or p.get('note')} | {p['mpx']:.2f} |")


if __name__ == "__main__":
    main()
