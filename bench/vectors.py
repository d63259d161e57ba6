"""Time and peak memory of vector output (tileseg.engine.vectors.sink.VectorSink) on square masks of growing size.

The masks are synthetic and made strip by strip (never whole): discs of two classes on a grid, and vertical
bars that cross every strip, so that both many small regions and regions spanning the whole image are
carried across the seams. Each size runs in its own process, so that its peak resident memory is its own.

    python -m bench.vectors [--sizes 2048 8192 20000] [--strip 512] [--format gpkg]

Prints a table: size, regions written, seconds, Mpx/s, peak RSS of the process (MiB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def strip_of(y: int, height: int, width: int) -> np.ndarray:
    """Rows ``y .. y + height`` of the synthetic mask (uint8 classes 0..2)."""
    rows = np.arange(y, y + height)[:, None]
    cols = np.arange(width)[None, :]
    cy, cx = rows % 64 - 32, cols % 64 - 32
    mask = np.where(cy * cy + cx * cx < 20 * 20, 1 + ((rows // 64 + cols // 64) % 2), 0).astype(np.uint8)
    mask[:, (cols[0] % 1024) < 6] = 2  # bars from the first row to the last
    return mask


def run_one(size: int, strip: int, fmt: str) -> dict:
    from affine import Affine

    from tileseg.engine.options import SegmentOptions
    from tileseg.engine.vectors.sink import VectorSink
    from tileseg.models.spec import ClassInfo

    class Spec:  # only what the sink reads of a model's spec
        name = "bench"
        classes = (ClassInfo(0, "ground", "#000000", True), ClassInfo(1, "a", "#ff0000"), ClassInfo(2, "b", "#00ff00"))

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"regions.{fmt}"
        started = time.perf_counter()
        sink = VectorSink(path, Spec, size, None, Affine.identity(), SegmentOptions())
        for y in range(0, size, strip):
            sink.write(y, strip_of(y, min(strip, size - y), size), None)
        sink.finish()
        sink.commit()
        seconds = time.perf_counter() - started
        import pyogrio

        count = pyogrio.read_info(path)["features"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "regions": count, "seconds": seconds, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 20000])
    parser.add_argument("--strip", type=int, default=512)
    parser.add_argument("--format", default="gpkg")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.strip, args.format)))
        return
    print(f"{'size':>7} {'regions':>9} {'seconds':>8} {'Mpx/s':>7} {'peak MiB':>9}")
    for size in args.sizes:
        command = [sys.executable, __file__, "--one", str(size), "--strip", str(args.strip), "--format", args.format]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        mpx = size * size / row["seconds"] / 1e6
        print(f"{size:>7} {row['regions']:>9} {row['seconds']:>8.1f} {mpx:>7.2f} {row['peak_mib']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
