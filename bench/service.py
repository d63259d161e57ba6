"""Benchmark: what the HTTP service adds to the engine, and how many small jobs a minute it serves.

1. Overhead. The same image and network as ``bench/engine.py`` (a padded U-Net, depth 4, base 16, random
   weights; a mosaic of the Blue Marble scene): ``tileseg segment`` once, then the same job through a
   running ``tileseg serve``, submitted by ``source`` (no upload) and by upload, timed from the request to
   the last byte of the downloaded mask. The overhead is the service's end-to-end time over the engine's
   own time (what the command line reports), less one. Target: under 10 %.
2. Throughput. ``--clients`` clients at once, each submitting small images (uploads) one after another and
   downloading each mask: jobs per minute over the whole run.

    python -m bench.service                       # the README's table: 4096^2 (about 10 minutes on 2 cores)
    python -m bench.service --size 1024 --jobs 20 # a quick look

Both sides use torch's default threads. Shared machines are noisy: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import make_image, make_model, tileseg  # the same network and image

REPO = Path(__file__).resolve().parent.parent

MODEL = "bench-unet"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(env: dict, image: Path, out: Path, tile: int) -> tuple[float, float]:
    """Wall seconds of ``tileseg segment``, and the engine's own seconds as it reports them."""
    started = time.perf_counter()
    done = subprocess.run(
        tileseg("segment", str(image), str(out), "--model", MODEL, "--tile", str(tile)),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"tileseg segment failed:\n{done.stderr}")
    engine = float(re.search(r"tiles \(\d+ nodata\), ([0-9.]+) s", done.stderr).group(1))
    return wall, engine


class Service:
    """``tileseg serve`` in a subprocess."""

    def __init__(self, env: dict, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "wb")
        self.process = subprocess.Popen(
            tileseg("serve", "--port", str(self.port), "--log-level", "warning"),
            env=env,
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit(f"the server did not start; see {log}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.log.close()


def one_job(
    url: str, out: Path, tile: int, image: Path | None = None, source: str | None = None, poll: float = 0.05
) -> float:
    """Submit, wait, download; returns the seconds from the request to the mask's last byte."""
    import httpx

    fields = {"model": MODEL, "tile": str(tile)}
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600) as client:
        if image is not None:
            with open(image, "rb") as fh:
                response = client.post("/segment", data=fields, files={"file": (image.name, fh)})
        else:
            response = client.post("/segment", files=[(k, (None, v)) for k, v in {**fields, "source": source}.items()])
        response.raise_for_status()
        location = response.headers["Location"]
        while (job := client.get(location).json())["status"] in ("queued", "running"):
            time.sleep(poll)
        if job["status"] != "succeeded":
            raise SystemExit(f"job failed: {job['error']}")
        with client.stream("GET", job["links"]["mask"]) as download, open(out, "wb") as fh:
            for chunk in download.iter_bytes(1 << 20):
                fh.write(chunk)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="side of the overhead image (default 4096)")
    parser.add_argument("--tile", type=int, default=384, help="core size, as bench/engine.py")
    parser.add_argument("--small", type=int, default=256, help="side of the throughput images")
    parser.add_argument("--jobs", type=int, default=60, help="small jobs in the throughput run")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients in the throughput run")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tileseg-bench-service-"))
    try:
        make_model(work / "weights", args.tile)
        image, small = work / "inputs" / f"mosaic-{args.size}.tif", work / "inputs" / f"small-{args.small}.tif"
        image.parent.mkdir()
        make_image(image, args.size)
        make_image(small, args.small)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILESEG_")}
        env.update(
            {
                "TILESEG_WEIGHTS_DIR": str(work / "weights"),
                "TILESEG_DATA_DIR": str(work / "data"),
                "TILESEG_INPUT_ROOTS": str(image.parent),
                "TILESEG_DEVICE": "cpu",
            }
        )

        cli_wall, cli_engine = run_cli(env, image, work / "cli.tif", args.tile)
        service = Service(env, work / "server.log")
        try:
            by_source = one_job(service.url, work / "source.tif", args.tile, source=image.name)
            by_upload = one_job(service.url, work / "upload.tif", args.tile, image=image)
            one_job(service.url, work / "warm.tif", args.tile, image=small)  # the small path warmed up
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(
                    pool.map(
                        lambda i: one_job(service.url, work / f"small{i}.tif", args.tile, image=small), range(args.jobs)
                    )
                )
            throughput = args.jobs / (time.perf_counter() - started) * 60
        finally:
            service.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"network: U-Net depth 4 base 16, 3 bands; tile {args.tile}\n"
    )
    print(f"| run ({args.size}² image) | seconds | vs the engine |")
    print("|---|---:|---:|")
    print(f"| engine, as `tileseg segment` reports it | {cli_engine:.1f} | — |")
    print(
        f"| `tileseg segment`, whole process (start, model load) | {cli_wall:.1f} | {cli_wall / cli_engine - 1:+.1%} |"
    )
    print(
        f"| service, by `source`: request to last byte of the mask | {by_source:.1f} | "
        f"{by_source / cli_engine - 1:+.1%} |"
    )
    print(
        f"| service, by upload: request to last byte of the mask | {by_upload:.1f} | "
        f"{by_upload / cli_engine - 1:+.1%} |"
    )
    print(
        f"\n| throughput | |\n|---|---:|\n| {args.clients} clients, {args.jobs} jobs of {args.small}², "
        f"uploaded | {throughput:.0f} jobs/min |"
    )


if __name__ == "__main__":
    main()
