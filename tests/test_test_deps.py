"""`make test` on a machine that lacks the system packages: scripts/test-deps.sh installs them as root, and
otherwise stops at once with the exact command to run (never a suite that fails test by test later)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = REPO / "scripts" / "test-deps.sh"


def bare_path(folder: Path) -> str:
    """A PATH with only what the script itself needs: no redis-server, docker-compose, QGIS, podman or sudo
    (in a folder the other user may read)."""
    folder.chmod(0o755)
    bin_dir = folder / "bin"
    bin_dir.mkdir(mode=0o755)
    for tool in ("bash", "id", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the script as another user")
def test_without_root_it_stops_at_once_with_the_exact_command():
    folder = Path(tempfile.mkdtemp(prefix="tileseg-test-deps-"))  # pytest's own are readable by root only
    try:
        done = run_as_nobody(folder)
    finally:
        shutil.rmtree(folder)
    assert done.returncode == 1, done.stderr
    assert "sudo apt-get install -y --no-install-recommends redis-server" in done.stderr
    assert "docker-compose" in done.stderr and "qgis python3-qgis" in done.stderr
    assert "sudo .ci/containers.sh setup" in done.stderr and "make test-quick" in done.stderr


def run_as_nobody(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(SCRIPT)],
        env={"PATH": bare_path(folder), "HOME": "/"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
