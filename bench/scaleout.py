"""Benchmark: scale-out throughput with 1 and 2 queue workers, and how soon a dead worker's job runs again.

Real parts on loopback: Redis and PostgreSQL (the test suite's throwaway servers, ``tests/backends.py``),
``tileseg serve`` in queue mode and ``tileseg worker`` processes; the network and the image are those of
``bench/engine.py`` (a padded U-Net, depth 4, base 16, random weights; a mosaic of the Blue Marble scene).

1. Throughput. ``--jobs`` jobs of a ``--size``² image, submitted by ``source`` all at once, run by 1 worker,
   then by 2; jobs per minute from the first request to the last success, and the ratio. Each worker has
   ``--threads`` torch threads (default 1): a worker stands for one GPU, a fixed share of compute, so on a
   machine with two free cores the ideal ratio is 2.
2. Recovery. With 2 workers, one job (at a quarter of the tile, so that it has many batches); once it
   shows a tile done, its worker is SIGKILLed. Reported: the
   seconds from the kill until the job is queued again (its lease ran out and a reaper saw it) and until
   the other worker runs it. With the default settings (lease 30 s, heartbeat 10 s, a reaper pass every
   10 s) that is at most about 40 s, instead of the broker's one-hour visibility timeout.

    python -m bench.scaleout                                   # the README's numbers (about 6 minutes on 2 cores)
    python -m bench.scaleout --size 256 --jobs 2 --lease 3 --heartbeat 1 --reap-interval 0.5   # a quick look

Needs ``redis-server`` and PostgreSQL installed (``.ci/run`` installs them). Shared machines are noisy:
run it on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import make_image, make_model, tileseg  # the same network and image
from tests.backends import PostgresCluster, RedisServer, free_port

REPO = Path(__file__).resolve().parent.parent

MODEL = "bench-unet"


class Process:
    """A ``tileseg`` command in a subprocess, its output in a log file."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(tileseg(*args), env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def wait_for(self, ready, what: str, timeout: float = 180) -> None:
        """Wait until ``ready()``; exit with a pointer to the log if the process dies or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{what} exited ({self.process.returncode}); see {self.log}")
            if ready():
                return
            time.sleep(0.2)
        raise SystemExit(f"{what} did not start in {timeout} s; see {self.log}")

    def stop(self) -> None:
        """SIGTERM, and wait (the running job's grace period included)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_workers(count: int, env: dict, logs: Path, first: int) -> list[Process]:
    """Start ``count`` workers and wait until Celery says each is ready."""
    workers = [Process(["worker", "--log-level", "info"], env, logs / f"worker-{first + i}.log") for i in range(count)]
    for worker in workers:
        worker.wait_for(lambda w=worker: " ready." in w.log.read_text(errors="replace"), "a worker")
    return workers


def submit(client, source: str, tile: int) -> str:
    """Queue a job on a file under the input root; returns its id."""
    response = client.post(
        "/segment", files=[(k, (None, v)) for k, v in {"model": MODEL, "source": source, "tile": str(tile)}.items()]
    )
    response.raise_for_status()
    return response.json()["id"]


def run_batch(url: str, source: str, jobs: int, tile: int) -> float:
    """Submit ``jobs`` jobs at once and wait for all; returns jobs per minute."""
    import httpx

    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600) as client:
        ids = [submit(client, source, tile) for _ in range(jobs)]
        for job_id in ids:
            while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
                time.sleep(0.1)
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job_id} ended {job['status']}: {job['error']}")
    return jobs / (time.perf_counter() - started) * 60


def recovery(url: str, database: str, workers: list[Process], source: str, tile: int) -> tuple[float, float]:
    """Kill the worker of a running job; seconds until the job is queued again, and until it runs again."""
    import httpx

    from tileseg.jobs.store import JobStatus, JobStore

    store = JobStore(database)
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            job_id = submit(client, source, tile)
        while not ((job := store.get(job_id)).status is JobStatus.RUNNING and job.tiles_done >= 1):
            if job.status.finished:
                raise SystemExit("the job ended before a worker could be killed under it: use a larger --size")
            time.sleep(0.02)
        pid = int(job.worker.rsplit(":", 1)[1])
        victim = next(w for w in workers if w.process.pid == pid)
        killed = time.perf_counter()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        queued_after = None
        while (job := store.get(job_id)).attempts < 2:
            if queued_after is None and job.status is JobStatus.QUEUED:
                queued_after = time.perf_counter() - killed
            time.sleep(0.02)
        running_after = time.perf_counter() - killed
        with httpx.Client(base_url=url, timeout=600) as client:
            client.delete(f"/jobs/{job_id}")  # measured: the survivor need not finish it
        return (queued_after if queued_after is not None else running_after), running_after
    finally:
        store.close()


def main() -> None:
    """Run both measurements and print the README's tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="side of each job's image (default 1024)")
    parser.add_argument("--jobs", type=int, default=8, help="jobs in each throughput run (default 8)")
    parser.add_argument("--tile", type=int, default=256, help="core size (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--lease", type=float, default=30.0, help="TILESEG_LEASE (default 30)")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="TILESEG_HEARTBEAT (default 10)")
    parser.add_argument("--reap-interval", type=float, default=10.0, help="TILESEG_REAP_INTERVAL (default 10)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tileseg-bench-scaleout-"))
    redis = postgres = api = None
    workers: list[Process] = []
    try:
        make_model(work / "weights", args.tile)
        (work / "inputs").mkdir()
        image = work / "inputs" / f"mosaic-{args.size}.tif"
        make_image(image, args.size)
        redis = RedisServer(work).start()
        postgres = PostgresCluster().start()
        database = postgres.create_database("tileseg_bench")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILESEG_")}
        env.update(
            {
                "TILESEG_WEIGHTS_DIR": str(work / "weights"),
                "TILESEG_DATA_DIR": str(work / "data"),
                "TILESEG_INPUT_ROOTS": str(image.parent),
                "TILESEG_DEVICE": "cpu",
                "TILESEG_MODE": "queue",
                "TILESEG_BROKER_URL": redis.url,
                "TILESEG_DATABASE_URL": database,
                "TILESEG_TORCH_THREADS": str(args.threads),
                "OMP_NUM_THREADS": str(args.threads),
                "TILESEG_LEASE": str(args.lease),
                "TILESEG_HEARTBEAT": str(args.heartbeat),
                "TILESEG_REAP_INTERVAL": str(args.reap_interval),
            }
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        api = Process(["serve", "--port", str(port), "--log-level", "warning"], env, work / "api.log")

        def api_ready() -> bool:
            import httpx

            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        api.wait_for(api_ready, "the API")
        workers = start_workers(1, env, work, 0)
        run_batch(url, image.name, 1, args.tile)  # warm: the first job pays for lazy imports
        one = run_batch(url, image.name, args.jobs, args.tile)
        workers += start_workers(1, env, work, 1)
        two = run_batch(url, image.name, args.jobs, args.tile)
        requeued, restarted = recovery(url, database, workers, image.name, max(32, args.tile // 4 // 16 * 16))
    finally:
        for process in [*workers, api]:
            if process is not None:
                process.stop()
        for server in (postgres, redis):
            if server is not None:
                server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; network: U-Net depth 4 "
        f"base 16, 3 bands; {args.size}² images, tile {args.tile}; {args.threads} torch thread(s) a worker\n"
    )
    print("| workers | jobs/min | vs 1 worker |\n|---:|---:|---:|")
    print(f"| 1 | {one:.2f} | 1.00 |\n| 2 | {two:.2f} | {two / one:.2f} |")
    print(
        f"\n| a worker SIGKILLed mid-job (lease {args.lease:g} s, heartbeat {args.heartbeat:g} s, reaper every "
        f"{args.reap_interval:g} s) | seconds |\n|---|---:|"
    )
    print(f"| until its job is queued again | {requeued:.1f} |\n| until the other worker runs it | {restarted:.1f} |")


if __name__ == "__main__":
    main()
