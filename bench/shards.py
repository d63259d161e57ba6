"""Benchmark: one image in shards (``tileseg segment --workers N``): measured here, and projected at scale.

Measured (the network and image of ``bench/engine.py``: a padded U-Net, depth 4, base 16, random weights; a
``--size``² mosaic of the Blue Marble scene; fp32, PyTorch eager, the tile fixed so nothing is tuned):

1. one process: wall time and the time per tile;
2. ``--workers`` processes (default 2) on the same image: wall time and speed-up over one;
3. the fixed cost of a shard's process: spawn, import, the model handed over (a process that runs no tile);
4. the assembly: the shard files streamed into the final mask (and COG with ``--cog``), per output pixel.

Projected (a model, not a measurement): the wall time of a 150000 × 100000 image on 1, 4, 16 and 64 workers,

    wall(N) = start-up + tiles × seconds per tile / N + assembly seconds per pixel × pixels

assuming every worker is as fast per tile as ``--tile-seconds`` (default: the time per tile measured here
on this machine's CPU share; pass a GPU's measured time per tile to project GPUs), that shards are even
(tile rows split evenly; ROI/nodata skipping ignored), that the input storage feeds every worker at that
rate, and that the assembly runs in one process after the last shard, at the rate measured here.

    python -m bench.shards                      # about 2 minutes on 2 cores
    python -m bench.shards --size 1024 --workers 2 --tile-seconds 0.004
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

from bench.common import make_image, make_model  # the same network and image

REPO = Path(__file__).resolve().parent.parent

TARGET = (100_000, 150_000)  # rows, columns of the projected image
PROJECTED_WORKERS = (1, 4, 16, 64)


def startup_seconds(model) -> float:
    """Seconds to start a spawned process that imports the engine and receives the model, as a shard's does."""
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    process = context.Process(target=_hand_over, args=(model,))
    process.start()
    process.join()
    return time.perf_counter() - started


def _hand_over(model) -> None:
    import tileseg.engine.shards.run  # noqa: F401  (what a shard's process imports before its first tile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cog", action="store_true", help="Write COGs (their overviews add to the assembly).")
    parser.add_argument("--tile-seconds", type=float, help="Per-tile seconds of a worker, for the projection.")
    args = parser.parse_args()

    from tileseg import models
    from tileseg.engine import segment
    from tileseg.engine.options import SegmentOptions
    from tileseg.engine.runtime.device import configure_threads
    from tileseg.engine.shards.plan import segment_sharded

    cores = len(os.sched_getaffinity(0))
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores in this process's affinity")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = folder / "image.tif"
        make_image(image, args.size)
        model = models.load(make_model(folder, args.tile), device="cpu")
        options = SegmentOptions(
            tile=args.tile, batch=2, precision="fp32", runtime="torch", compile="off", cog=args.cog
        )
        configure_threads(cores)
        one = segment(model, image, folder / "one.tif", options)
        per_tile = one.seconds / max(1, one.tiles_total - one.tiles_skipped)
        many = segment_sharded(model, image, folder / "many.tif", ["cpu"] * args.workers, options)
        startup = startup_seconds(model)
        assembly = assembly_seconds(model, image, folder, options, args.workers)
    pixels = args.size * args.size
    print(f"MEASURED here, {args.size}² image, tile {args.tile}, {one.tiles_total} tiles:")
    print(f"  1 process:  {one.seconds:7.2f} s  ({per_tile * 1000:.1f} ms a tile, all {cores} cores)")
    print(
        f"  {args.workers} processes: {many.seconds:7.2f} s  (speed-up {one.seconds / many.seconds:.2f}x; "
        f"{cores // args.workers or 1} torch threads each)"
    )
    print(f"  a shard process's start-up (spawn, imports, the model handed over): {startup:.2f} s")
    print(
        f"  assembly of the shard files (mask{', COG' if args.cog else ''}): {assembly:.3f} s, "
        f"{assembly / pixels * 1e9:.2f} s per gigapixel"
    )
    tile_seconds = args.tile_seconds if args.tile_seconds is not None else per_tile
    label = "given (--tile-seconds)" if args.tile_seconds is not None else "measured here on CPU"
    rows, cols = TARGET
    tiles = math.ceil(rows / args.tile) * math.ceil(cols / args.tile)
    assemble = assembly / pixels * rows * cols
    print(
        f"PROJECTED (not measured) for {cols} x {rows}: {tiles} tiles at {tile_seconds * 1000:.2f} ms a tile "
        f"({label}), assembly {assemble / 60:.1f} min in one process"
    )
    for n in PROJECTED_WORKERS:
        wall = startup + tiles * tile_seconds / n + assemble
        print(f"  {n:3d} workers: {wall / 3600:7.2f} h  (network {tiles * tile_seconds / n / 3600:.2f} h)")


def assembly_seconds(model, image, folder: Path, options, workers: int) -> float:
    """Run the shards one after another in this process (for their files), then time only their assembly."""
    from tileseg.engine.io.inputs import open_input
    from tileseg.engine.io.read import gdal_env
    from tileseg.engine.outputs import make_sinks
    from tileseg.engine.readplan import read_plan
    from tileseg.engine.runtime.runtimes import BASELINE
    from tileseg.engine.shards.run import ShardJob, assembled_strips, plan_shards, run_shard
    from tileseg.engine.sinks import write_all
    from tileseg.engine.tiling import TilePlan, tile_settings

    spec = model.spec
    with gdal_env(), open_input(image, spec) as full, read_plan(full, spec, options) as plan:
        settings = tile_settings(spec, options)
        tiles = TilePlan(settings, plan.source.height, plan.source.width)
        shard_folder = folder / "shards"
        shard_folder.mkdir()
        results = [
            run_shard(
                ShardJob(
                    i,
                    workers,
                    rows,
                    model,
                    "cpu",
                    1,
                    str(image),
                    options,
                    settings,
                    BASELINE,
                    shard_folder,
                    False,
                    tiles.cols,
                )
            )
            for i, rows in enumerate(plan_shards(tiles.rows, workers))
        ]
        started = time.perf_counter()
        write_all(
            make_sinks(plan, spec, options, folder / "assembled.tif", None, None),
            assembled_strips(results, spec, settings.step),
            {},
        )
        return time.perf_counter() - started


if __name__ == "__main__":
    main()
