"""The container's deployment checks, run by ``docker/entrypoint.sh`` before ``tileseg serve`` or
``tileseg worker``: the data directory can be written, and the weights folder holds the checkpoints to serve.

A container whose volume or weights mount is wrong must say so, not crash-loop: while a check fails this
script logs the reasons (again every minute), answers ``/livez`` 200 and ``/readyz`` (and everything else)
503 with ``{"error": {"code": "not_ready", "message": <the reasons>}}`` on the server's port, so that the
HEALTHCHECK turns the container unhealthy, and looks again every few seconds. Once the checks pass it exits
0 and the entrypoint starts the command; SIGTERM ends it with 143.

    python preflight.py tileseg serve --host 0.0.0.0 --port 8000
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RECHECK_SECONDS = 5.0
RELOG_SECONDS = 60.0


def data_dir_problem(data_dir: Path) -> str | None:
    """Why ``data_dir`` cannot hold the job table and results, or None: made if missing, then written to."""
    who = f"uid {os.getuid()}"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".preflight-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return (
            f"the data directory {data_dir} is not writable by {who} ({err.strerror}): mount a volume there "
            f"that {who} may write (a fresh named volume is; a host folder needs `chown {os.getuid()}`)"
        )
    return None


def weights_problem(weights_dir: Path, wanted: list[str]) -> str | None:
    """Why ``weights_dir`` cannot serve ``wanted`` (every checkpoint found, when empty), or None."""
    if not weights_dir.is_dir():
        return f"the weights folder {weights_dir} (TILESEG_WEIGHTS_DIR) does not exist: is its mount missing?"
    try:
        installed = sorted(p.stem for p in weights_dir.glob("*.safetensors") if p.with_suffix(".json").is_file())
    except OSError as err:
        return f"the weights folder {weights_dir} cannot be read ({err.strerror})"
    if not installed:
        return (
            f"no checkpoint (NAME.safetensors with its card NAME.json) in the weights folder {weights_dir}: "
            "is the folder mounted there empty, or the wrong one?"
        )
    missing = [name for name in wanted if name not in installed]
    if missing:
        return (
            f"TILESEG_MODELS names {', '.join(missing)}, not in the weights folder {weights_dir}; "
            f"there: {', '.join(installed)}"
        )
    return None


def problems() -> list[str]:
    """Everything that keeps this container from working, from its TILESEG_* settings."""
    found = [
        data_dir_problem(Path(os.environ.get("TILESEG_DATA_DIR", "tileseg-data"))),
        weights_problem(
            Path(os.environ.get("TILESEG_WEIGHTS_DIR", "/weights")),
            [n.strip() for n in os.environ.get("TILESEG_MODELS", "").split(",") if n.strip()],
        ),
    ]
    return [p for p in found if p]


def option(args: list[str], name: str, default: str) -> str:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args``."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def not_ready_server(host: str, port: int, reasons: list[str]) -> ThreadingHTTPServer:
    """An HTTP server that answers like a server that is alive but not ready, giving ``reasons``."""
    body = json.dumps({"error": {"code": "not_ready", "message": "; ".join(reasons)}, "checks": {"preflight": False}})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            alive = self.path.split("?")[0] == "/livez"
            payload = json.dumps({"status": "alive"}) if alive else body
            self.send_response(200 if alive else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload.encode())

        do_POST = do_DELETE = do_GET

        def log_message(self, *args) -> None:  # the healthcheck polls: keep the log for the reasons
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(command: list[str]) -> int:
    """Wait until the checks pass (0), serving not-ready for ``tileseg serve`` meanwhile."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    reasons = problems()
    if not reasons:
        return 0
    server = None
    if command[1:2] == ["serve"]:
        host, port = option(command, "--host", "127.0.0.1"), int(option(command, "--port", "8000"))
        server = not_ready_server(host, port, reasons)
    logged = 0.0
    while reasons:
        if time.monotonic() - logged >= RELOG_SECONDS:
            for reason in reasons:
                print(f"preflight: not ready: {reason}", file=sys.stderr, flush=True)
            logged = time.monotonic()
        time.sleep(RECHECK_SECONDS)
        reasons = problems()
    if server is not None:
        server.shutdown()
        server.server_close()
    print("preflight: the checks pass now; starting", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
