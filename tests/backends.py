"""Real Redis and PostgreSQL servers for the scale-out tests, on loopback, each in a temporary folder.

Debian's ``redis-server`` runs without persistence on a free port; PostgreSQL runs as a throwaway cluster
(``initdb`` + ``pg_ctl``) on a free port, never the machine's own cluster. As root, PostgreSQL must run as
another user: the ``postgres`` account that Debian's package makes, through ``runuser``. ``.ci/run``
installs both; where one is missing the tests fail and say so, they are never skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL_HINT = ".ci/run installs it (apt-get install redis-server postgresql docker-compose)"


class MissingTool(RuntimeError):
    """A server binary the tests need is not installed."""


def free_port() -> int:
    """A loopback port that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s:\n{tail}")


class RedisServer:
    """``redis-server`` on a free loopback port, no persistence. :meth:`restart` brings it back empty."""

    def __init__(self, root: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise MissingTool(f"redis-server is not installed: {INSTALL_HINT}")
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        """Start it and wait until it listens."""
        log = self.root / "redis.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.root),
                    "--protected-mode",
                    "no",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_for_port(self.port, 20, "redis-server", log)
        return self

    def stop(self) -> None:
        """Stop it (its data go with it: there is no persistence)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Stop it and start a new, empty one on the same port (what a broker restart without persistence
        looks like to its clients)."""
        self.stop()
        self.start()

    def client(self):
        """A redis-py client of it."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)


class PostgresCluster:
    """A throwaway PostgreSQL cluster on a free loopback port, trusting local connections."""

    def __init__(self):
        found = shutil.which("initdb") or next(
            iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None
        )
        if found is None:
            raise MissingTool(f"PostgreSQL (initdb) is not installed: {INSTALL_HINT}")
        self.bin = Path(os.path.realpath(found)).parent
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
                raise MissingTool(f"as root, PostgreSQL runs as the `postgres` user, which is missing: {INSTALL_HINT}")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # not under pytest's temporary folder: the postgres user must reach it, and a short socket path
        self.root = Path(tempfile.mkdtemp(prefix="tileseg-pg-"))
        if self.as_user:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.port = free_port()

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self) -> PostgresCluster:
        """Make the cluster and start it on its port."""
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        # durability is not what these tests are about; fsync off keeps the disk quiet
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "pg.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of a database of this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the cluster and remove its files."""
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
            except RuntimeError:
                pass  # already gone
        shutil.rmtree(self.root, ignore_errors=True)


__all__ = ["INSTALL_HINT", "MissingTool", "PostgresCluster", "RedisServer", "free_port"]


class S3Server:
    """A real S3 endpoint on a free loopback port: moto's standalone server, reached through the variables a
    user sets for boto3 and the AWS CLI (:attr:`env`), nothing GDAL-specific."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }
        self._buckets = 0

    def start(self) -> S3Server:
        self.server.start()
        _wait_for_port(self.port, 20, "moto's S3 server", Path(os.devnull))
        return self

    def stop(self) -> None:
        self.server.stop()

    def client(self):
        """A boto3 client of it."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def bucket(self, name: str | None = None) -> str:
        """Make a bucket (a fresh name unless given) and return its name."""
        self._buckets += 1
        name = name or f"bucket-{os.getpid()}-{self._buckets}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys in ``bucket`` under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))
