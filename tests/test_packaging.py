"""`pip install .` gives one distribution with both packages, the `tileseg` command and the shipped weights,
which an installed (non-editable) package finds without the source tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

from .conftest import REPO


def test_the_wheel_carries_packages_command_and_weights(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path), str(REPO)], check=True, timeout=300)
    wheel = next(tmp_path.glob("tileseg-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "tileseg = service.cli:cli" in archive.read(entry_points).decode()
    shipped = sorted(p.name for p in (REPO / "weights").iterdir() if p.suffix in (".json", ".safetensors"))
    assert shipped, "the repository ships weights"
    assert {f"models/weights/{name}" for name in shipped} <= names
    assert {"service/engine.py", "models/registry.py"} <= names
    # run from elsewhere, with only the unpacked wheel on the path: the package finds its own weights
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("TILESEG_WEIGHTS_DIR", None)
    code = "import json, models; print(json.dumps([models.__file__, models.available()]))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=True, timeout=120)
    location, available = json.loads(done.stdout)
    assert location.startswith(str(site))
    assert sorted(available) == sorted({name.rsplit(".", 1)[0] for name in shipped})
