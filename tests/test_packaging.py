"""`pip install .` gives one distribution with one import namespace, `tileseg`: every package folder of the
repository, the `tileseg` command and the shipped weights, which an installed (non-editable) package finds
without the source tree, and which no user's own `models.py` or `service.py` can shadow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

from .conftest import REPO

SOURCE_ROOTS = {"service": "tileseg", "models": "tileseg/models", "weights": "tileseg/weights"}


def package_folders() -> set[str]:
    """Every package folder of the source tree, as the wheel must name it."""
    found = set()
    for folder, target in SOURCE_ROOTS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).as_posix()
            found.add(target if relative == "." else f"{target}/{relative}")
    return found


def test_the_wheel_holds_only_tileseg_with_every_package_command_and_weights(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("tileseg-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "tileseg = tileseg.cli:cli" in archive.read(entry_points).decode()
    top_level = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == {"tileseg"}, f"the wheel installs more than one top-level package: {top_level}"
    packaged = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert package_folders() <= packaged, f"package folders missing from the wheel: {package_folders() - packaged}"
    shipped = sorted(p.name for p in (REPO / "weights").iterdir() if p.suffix in (".json", ".safetensors"))
    assert shipped, "the repository ships weights"
    assert {f"tileseg/weights/{name}" for name in shipped} <= names
    # run from a folder that holds a models.py and a service.py of its own, with only the unpacked wheel on
    # the path: nothing of ours is shadowed, and the package finds its own weights
    (tmp_path / "models.py").write_text("raise SystemExit('a user module named models was imported')\n")
    (tmp_path / "service.py").write_text("raise SystemExit('a user module named service was imported')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{site}"}
    env.pop("TILESEG_WEIGHTS_DIR", None)
    code = (
        "import json, tileseg, tileseg.engine, tileseg.api, tileseg.cli; from tileseg import models; "
        "print(json.dumps([tileseg.models.__file__, models.available()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    location, available = json.loads(done.stdout)
    assert location.startswith(str(site))
    assert sorted(available) == sorted({name.rsplit(".", 1)[0] for name in shipped})


def test_the_editable_install_imports_tileseg_beside_a_users_models_py(tmp_path):
    (tmp_path / "models.py").write_text("raise SystemExit('a user module named models was imported')\n")
    code = "import tileseg.models, tileseg.engine; print(tileseg.models.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(REPO / "models" / "__init__.py")
