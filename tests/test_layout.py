"""The layout's rules, checked on the source: dependencies flow one way, and functions stay short.

tileseg.models (spec, architectures, checkpoints)  <-  tileseg.engine  <-  tileseg.training
                                                                   <-  tileseg.jobs  <-  tileseg.api, tileseg.cli
The viewer straddles two levels: its render and preview sit on the engine (the jobs make view copies and
previews with them), its routes on the jobs and the API's dependencies (the API's app includes them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

SOURCE = {"service": "tileseg", "models": "tileseg.models"}
# the viewer's parts that the jobs use sit on the engine: nothing above it, nor the viewer's own routes
VIEWER_ON_ENGINE = ["tileseg.jobs", "tileseg.api", "tileseg.cli", "tileseg.settings", "tileseg.api.routes_viewer"]
# a package may not import these (prefix match); the root modules errors/settings are shared by all
FORBIDDEN = {
    "tileseg.models": ["tileseg.engine", "tileseg.jobs", "tileseg.api", "tileseg.cli", "tileseg.training"],
    "tileseg.engine": [
        "tileseg.jobs",
        "tileseg.api",
        "tileseg.cli",
        "tileseg.training",
        "tileseg.settings",
        "tileseg.viewer",
    ],
    # the io folder reads and writes rasters; it never reaches up into the engine's stitching, sinks or vectors
    "tileseg.engine.io": [
        *("tileseg.jobs", "tileseg.api", "tileseg.cli", "tileseg.training", "tileseg.settings", "tileseg.viewer"),
        *(
            "tileseg.engine.stitching",
            "tileseg.engine.sinks",
            "tileseg.engine.vectors.sink",
            "tileseg.engine.vectors.polygons",
        ),
        *("tileseg.engine.pipeline", "tileseg.engine.readplan", "tileseg.engine.roi"),
    ],
    "tileseg.training": ["tileseg.jobs", "tileseg.api", "tileseg.cli"],
    "tileseg.jobs": ["tileseg.api", "tileseg.cli", "tileseg.api.routes_viewer"],
    "tileseg.api": ["tileseg.cli"],
    "tileseg.viewer": ["tileseg.cli"],
    # a notebook calling a server needs httpx only: nothing of the product, no torch (checked at run time too)
    "tileseg.client": [
        *("tileseg.models", "tileseg.engine", "tileseg.jobs", "tileseg.api", "tileseg.cli", "tileseg.training"),
        *("tileseg.viewer", "tileseg.settings", "tileseg.errors", "torch", "numpy", "rasterio"),
    ],
    "tileseg.engine.views.render": [
        "tileseg.jobs",
        "tileseg.api",
        "tileseg.cli",
        "tileseg.settings",
        "tileseg.api.routes_viewer",
    ],
    "tileseg.engine.views.preview": [
        "tileseg.jobs",
        "tileseg.api",
        "tileseg.cli",
        "tileseg.settings",
        "tileseg.api.routes_viewer",
    ],
}
MAX_FUNCTION_LINES = 60  # code lines, the docstring not counted
MAX_FUNCTION_LINES_WITH_DOCSTRING = 80
MAX_MODULE_LINES = 500


def modules() -> list[tuple[str, Path]]:
    found = []
    for folder, package in SOURCE.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found.append((".".join((package, *parts)), path))
    return found


def owner(module: str) -> str | None:
    """The most specific package of FORBIDDEN that ``module`` belongs to."""
    matches = [p for p in FORBIDDEN if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_dependencies_flow_one_way(module, path):
    package = owner(module)
    if package is None:
        return
    bad = sorted(n for n in imported(path) for f in FORBIDDEN[package] if n == f or n.startswith(f + "."))
    assert not bad, f"{module} ({package}) may not import {bad}"


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for module, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                    body = body[1:]  # the docstring
                if body:
                    lines = body[-1].end_lineno - body[0].lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, long


def test_no_module_is_longer_than_five_hundred_lines():
    long = [
        f"{module}: {n}" for module, path in modules() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, long


def test_no_function_with_its_docstring_is_longer_than_eighty_lines():
    long = []
    for module, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.body[0].lineno + 1
                if lines > MAX_FUNCTION_LINES_WITH_DOCSTRING:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, long


def test_every_reader_is_checked_against_raster_source():
    """Every reader class of the engine (a class named ``*Raster``) is checked to satisfy the one contract the
    pipeline reads through, ``RasterSource``, on a real instance in tests/engine/test_sources.py: a new reader
    cannot come in unchecked."""
    readers = {
        node.name
        for _, path in modules()
        if "/engine/" in path.as_posix()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.name.endswith("Raster")
    }
    assert {"InputRaster", "SlideRaster", "ArrayRaster", "ResampledRaster", "RoiRaster"} <= readers
    checked = (REPO / "tests" / "engine" / "test_sources.py").read_text()
    assert not [r for r in readers if r not in checked], f"readers not checked against RasterSource: {readers}"


def test_the_checker_sees_a_forbidden_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from tileseg.api.main import create_app\nimport tileseg.jobs.store\n")
    assert {"tileseg.api.main", "tileseg.jobs.store"} <= imported(sample)
    assert owner("tileseg.engine.pipeline") == "tileseg.engine"
    assert owner("tileseg.training.loop") == "tileseg.training"
    assert owner("tileseg.api.routes_viewer") == "tileseg.viewer"
    assert owner("tileseg.engine.views.render") == "tileseg.engine.views.render"
    assert owner("tileseg.client") == "tileseg.client"
