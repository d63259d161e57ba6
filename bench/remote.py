"""Benchmark: bytes read from a remote source, for a whole run and for regions of interest of several areas,
against the same file read locally. Prints a Markdown table.

    python -m bench.remote                 # 2048² images (about a minute on 2 cores)
    python -m bench.remote --size 4096

Two inputs, each ``size``²: a 3-band uint8 COG (deflate, 256² blocks, with its overviews) and a 3-band uint16
tiled GeoTIFF without overviews (its scaling needs statistics: the case that read the whole file before). Each is
segmented locally and from a loopback HTTP server that honours Range and counts the bytes it sends (GDAL's
``/vsicurl/``, its cache of downloaded ranges cleared before each run); locally, the bytes are the process's
``rchar`` (``/proc/self/io``) over the run: every ``read()`` of the process, an upper bound. The ROIs are
squares at the image's centre, given as GeoJSON polygons in pixel coordinates. The network: a padded U-Net
(depth 2, base width 4; random weights), 3 bands, 2 classes; fp32, eager, tile 256, batch 4.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

SHARES = (None, 0.0625, 0.125, 0.25, 0.5)  # whole run, then ROI sides as a share of the image's side


class CountingServer:
    """Files of ``root`` over HTTP on loopback, by single byte ranges; counts the bytes and requests."""

    def __init__(self, root: Path):
        self.root, self.bytes, self.requests = root, 0, 0
        lock, server = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.do_GET(body=False)

            def do_GET(self, body: bool = True):
                data = (server.root / self.path.lstrip("/")).read_bytes()
                match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                start = int(match.group(1)) if match else 0
                end = min(int(match.group(2) or len(data) - 1), len(data) - 1) if match else len(data) - 1
                self.send_response(206 if match else 200)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Content-Length", str(end + 1 - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not body:
                    return
                self.wfile.write(data[start : end + 1])
                with lock:
                    server.bytes += end + 1 - start
                    server.requests += 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def make_inputs(folder: Path, size: int) -> dict[str, Path]:
    import rasterio

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (3, size // 32 + 1, size // 32 + 1)).astype(np.float32)
    data = np.repeat(np.repeat(coarse, 32, axis=1), 32, axis=2)[:, :size, :size]
    data = (data + rng.normal(0, 12, data.shape)).clip(0, 255)
    common = dict(width=size, height=size, count=3, compress="deflate")
    paths = {"uint8 COG, overviews": folder / "cog.tif", "uint16 GeoTIFF, no overviews": folder / "u16.tif"}
    with rasterio.open(paths["uint8 COG, overviews"], "w", driver="COG", dtype="uint8", blocksize=256, **common) as d:
        d.write(data.astype(np.uint8))
    with rasterio.open(
        paths["uint16 GeoTIFF, no overviews"], "w", driver="GTiff", dtype="uint16", tiled=True, **common
    ) as dst:
        dst.write((data * 200).astype(np.uint16))
    return paths


def make_model(folder: Path):
    import torch

    from tileseg import models
    from tileseg.models.spec import ClassInfo, InputSpec, ModelSpec

    torch.manual_seed(0)
    net = models.build_model("unet", 3, 2, padding="same", depth=2, base=4)
    spec = ModelSpec(
        name="bench-remote",
        arch="unet",
        input=InputSpec(bands=3, mean=(0.5,) * 3, std=(0.25,) * 3, dtypes=("uint8", "uint16")),
        classes=(ClassInfo(0, "a", "#000000"), ClassInfo(1, "b", "#ffffff")),
        geometry=net.geometry(),
    )
    models.save(net, spec, folder / "bench-remote")
    return models.load(folder / "bench-remote", "cpu")


def roi_file(folder: Path, size: int, share: float) -> Path:
    side = size * share
    x0 = y0 = (size - side) / 2
    ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
    path = folder / f"roi-{share}.geojson"
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    return path


def rchar() -> int:
    found = re.search(r"rchar: (\d+)", Path("/proc/self/io").read_text())
    return int(found.group(1)) if found else 0


def measure(model, source: str, out: Path, roi: Path | None) -> float:
    from tileseg.engine import segment
    from tileseg.engine.io.gdalconfig import libgdal
    from tileseg.engine.options import SegmentOptions

    libgdal().VSICurlClearCache()  # each run starts cold: GDAL keeps downloaded ranges for the process
    options = SegmentOptions(
        runtime="torch", precision="fp32", tile=256, batch=4, readers=2, roi=str(roi) if roi else None
    )
    started = time.perf_counter()
    segment(model, source, out, options)
    return time.perf_counter() - started


def cpu_name() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = re.search(r"model name\s*:\s*(.+)", text)
    return found.group(1).strip() if found else platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    paths = make_inputs(folder, args.size)
    model = make_model(folder)
    server = CountingServer(folder)
    print(f"{cpu_name()}, {args.size}², tile 256\n")
    print("| input | run | file MB | local: MB read (share) | served: MB (share), requests | served s |")
    print("|---|---|---:|---:|---:|---:|")
    for label, path in paths.items():
        size = path.stat().st_size
        for share in SHARES:
            roi = roi_file(folder, args.size, share) if share else None
            before = rchar()
            measure(model, str(path), folder / "local.tif", roi)
            local = rchar() - before
            sent, requests = server.bytes, server.requests
            seconds = measure(model, f"{server.url}/{path.name}", folder / "served.tif", roi)
            sent, requests = server.bytes - sent, server.requests - requests
            run = f"ROI {round(args.size * share)}² ({share * share:.2%} of the area)" if share else "whole image"
            print(
                f"| {label} | {run} | {size / 1e6:.1f} | {local / 1e6:.1f} ({local / size:.0%}) | "
                f"{sent / 1e6:.1f} ({sent / size:.0%}), {requests} | {seconds:.1f} |"
            )
    server.httpd.shutdown()


if __name__ == "__main__":
    main()
