"""The QGIS plug-in against a real server: Debian's ``qgis_process.bin`` (QGIS's own command line) runs
``tileseg:segment`` from ``qgis/tileseg_qgis`` as QGIS loads it, and ``drive.py`` runs it inside the
system's Python where a test must reach what ``qgis_process`` cannot (cancel, the layers' styles).

Each test gets a fresh HOME, so QGIS's profile (which plug-ins are enabled) starts empty every time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.api.conftest import client, inputs_root, server, server_env, test_architectures, weights  # noqa: F401 (fixtures)
from tests.conftest import REPO

PLUGINS = REPO / "qgis"
QGIS_PROCESS = "qgis_process.bin"  # Debian's `qgis_process` wrapper adds --noversioncheck, which the .bin refuses
SYSTEM_PYTHON = "/usr/bin/python3"  # the Python QGIS's bindings (python3-qgis) are installed for
DRIVER = Path(__file__).with_name("drive.py")


@dataclass
class Run:
    """A finished command: its exit status and what it printed."""

    returncode: int
    output: str


@pytest.fixture
def qgis_env(tmp_path) -> dict[str, str]:
    """The environment of a headless QGIS with the plug-in folder on its path and a profile of its own."""
    if shutil.which(QGIS_PROCESS) is None:
        pytest.fail(f"{QGIS_PROCESS} is not installed: apt-get install qgis python3-qgis (see .ci/run)")
    home = tmp_path / "home"
    home.mkdir()
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("TILESEG_", "QGIS_", "PYTHON"))}
    return {**kept, "HOME": str(home), "QT_QPA_PLATFORM": "offscreen", "QGIS_PLUGINPATH": str(PLUGINS)}


@pytest.fixture
def qgis_process(qgis_env):
    """Run ``qgis_process.bin`` with these arguments, the plug-in enabled first."""
    enabled = _run([QGIS_PROCESS, "plugins", "enable", "tileseg_qgis"], qgis_env)
    assert enabled.returncode == 0, enabled.output

    def run(*args: str, timeout: float = 300) -> Run:
        return _run([QGIS_PROCESS, *args], qgis_env, timeout)

    return run


@pytest.fixture
def drive(qgis_env):
    """Run the algorithm inside the system's Python (``drive.py``): ``drive(parameters, cancel_at=None,
    load=False)`` returns its JSON report."""

    def run(parameters: dict[str, str], cancel_at: float | None = None, load: bool = False) -> dict:
        request = json.dumps({"parameters": parameters, "cancel_at": cancel_at, "load": load})
        done = _run([SYSTEM_PYTHON, str(DRIVER), str(PLUGINS), request], qgis_env)
        assert done.returncode == 0, done.output
        return json.loads(done.output.strip().splitlines()[-1])

    return run


def _run(command: list[str], env: dict[str, str], timeout: float = 300) -> Run:
    done = subprocess.run(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False
    )
    return Run(done.returncode, done.stdout.decode("utf-8", "replace"))
