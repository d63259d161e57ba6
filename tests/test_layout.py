"""The layout's rules, checked on the source: dependencies flow one way, no import cycles, modules and
functions stay short.

tileseg.errors, tileseg.urls, tileseg.config (leaves)  <-  tileseg.models  <-  tileseg.objectstore
    <-  tileseg.engine  <-  tileseg.training, tileseg.jobs  <-  tileseg.api, tileseg.cli
tileseg.cohorts (many inputs in one run: expansion, STAC search, manifest, runner) sits on the engine, the object
store and the leaves, beside training and the jobs: the CLI and the service's batches use it; it uses neither.
Inside the engine: io/ reads and writes rasters and knows nothing above it; runtime/ runs the network and knows
nothing of tiles being read or written; views/ draws the engine's outputs for the viewer. The viewer's routes are
the API's (api/routes_viewer.py): the jobs import nothing of the HTTP layer.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from .conftest import REPO

SOURCE = {"service": "tileseg", "models": "tileseg.models"}
PRODUCT = "tileseg"
ABOVE_ENGINE = ("tileseg.jobs", "tileseg.api", "tileseg.cli", "tileseg.training", "tileseg.settings")
# a package may not import these (prefix match)
FORBIDDEN = {
    # the leaves: the root error, URL masking and the engine's configuration import nothing of the product
    # (the configuration raises the root error)
    "tileseg.errors": [PRODUCT],
    "tileseg.urls": [PRODUCT],
    "tileseg.config": ["tileseg.models", "tileseg.engine", "tileseg.objectstore", *ABOVE_ENGINE, "tileseg.urls"],
    "tileseg.models": ["tileseg.engine", "tileseg.objectstore", *ABOVE_ENGINE],
    # the one S3 client sits below the engine: the engine's STAC reader uses it, never the other way round
    "tileseg.objectstore": ["tileseg.models", "tileseg.engine", *ABOVE_ENGINE],
    "tileseg.engine": [*ABOVE_ENGINE],
    # the io folder reads and writes rasters; it never reaches up into the engine's stitching, sinks or vectors
    "tileseg.engine.io": [
        *ABOVE_ENGINE,
        *("tileseg.engine.stitching", "tileseg.engine.sinks", "tileseg.engine.vectors", "tileseg.engine.outputs"),
        *("tileseg.engine.pipeline", "tileseg.engine.readplan", "tileseg.engine.roi", "tileseg.engine.runtime"),
        *("tileseg.engine.shards", "tileseg.engine.views", "tileseg.engine.tiling"),
    ],
    # running the network knows nothing of how tiles are read, stitched, written or sharded
    "tileseg.engine.runtime": [
        *ABOVE_ENGINE,
        *("tileseg.engine.io", "tileseg.engine.stitching", "tileseg.engine.sinks", "tileseg.engine.vectors"),
        *("tileseg.engine.pipeline", "tileseg.engine.readplan", "tileseg.engine.shards", "tileseg.engine.views"),
        *("tileseg.engine.outputs", "tileseg.engine.batches"),
    ],
    # the viewer's pictures are drawn from files; they know nothing of how a run made them
    "tileseg.engine.views": [
        *ABOVE_ENGINE,
        *("tileseg.engine.pipeline", "tileseg.engine.shards", "tileseg.engine.runtime", "tileseg.engine.sinks"),
    ],
    "tileseg.engine.vectors": [*ABOVE_ENGINE, "tileseg.engine.pipeline", "tileseg.engine.shards"],
    # objects are decoded from finished strips, as polygons are: nothing of how the strips were computed
    "tileseg.engine.instances": [
        *ABOVE_ENGINE,
        *("tileseg.engine.pipeline", "tileseg.engine.shards", "tileseg.engine.runtime", "tileseg.engine.outputs"),
        *("tileseg.engine.readplan", "tileseg.engine.batches"),
    ],
    "tileseg.training": ["tileseg.jobs", "tileseg.api", "tileseg.cli"],
    # many inputs in one run: the engine, the object store and the leaves; nothing of the jobs, the HTTP layer,
    # the command line, training or the service's settings
    "tileseg.cohorts": ["tileseg.jobs", "tileseg.api", "tileseg.cli", "tileseg.training", "tileseg.settings"],
    "tileseg.jobs": ["tileseg.api", "tileseg.cli", "tileseg.training"],
    "tileseg.api": ["tileseg.cli"],
    # a notebook calling a server needs httpx only: nothing of the product, no torch (checked at run time too)
    "tileseg.client": [PRODUCT, "torch", "numpy", "rasterio"],
}
# the packages the layout names: each must exist (a rule about a package that moved away checks nothing)
PACKAGES = [
    "tileseg.cohorts",
    "tileseg.engine.instances",
    "tileseg.engine.io",
    "tileseg.engine.runtime",
    "tileseg.engine.shards",
    "tileseg.engine.vectors",
    "tileseg.engine.views",
    "tileseg.engine.zarr",
    "tileseg.jobs.shards",
]
MAX_FUNCTION_LINES = 60  # code lines, the docstring not counted
MAX_FUNCTION_LINES_WITH_DOCSTRING = 80
MAX_MODULE_LINES = 400


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
    own = module if module != package else package  # a package may import itself (tileseg.client: tileseg.client)
    bad = sorted(
        n
        for n in imported(path)
        for f in FORBIDDEN[package]
        if (n == f or n.startswith(f + ".")) and not (n == own or n.startswith(package + "."))
    )
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


def test_no_module_is_longer_than_four_hundred_lines():
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


def product_imports() -> dict[str, set[str]]:
    """Each module of the product and the modules of the product it imports (``from a import b`` counts as
    importing ``a.b`` where that is a module, else ``a``), at any depth of the file (lazy imports too)."""
    names = {m for m, _ in modules()}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules():
        for name in imported(path):
            while name and name not in names:
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``, each as the path of modules that closes it (Tarjan's strongly connected
    components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    """No two modules import each other, directly or round a loop, lazily or not; a package's ``__init__``
    re-exporting its modules counts too. (An import inside a function to break a cycle hides it from Python,
    not from this test.)"""
    graph = product_imports()
    # a package's __init__ that re-exports from its own modules is the package's face, not a cycle with them
    for module in list(graph):
        graph[module] = {m for m in graph[module] if not (module.startswith(m + ".") and m in graph)}
    assert not cycles(graph), cycles(graph)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_the_layout_names_exists(package):
    assert package in {m for m, _ in modules()}, f"{package} is named by the layout's rules but does not exist"


def test_the_checker_sees_a_forbidden_import_and_a_cycle(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from tileseg.api.main import create_app\nimport tileseg.jobs.store\n")
    assert {"tileseg.api.main", "tileseg.jobs.store"} <= imported(sample)
    assert owner("tileseg.engine.pipeline") == "tileseg.engine"
    assert owner("tileseg.engine.runtime.tuner") == "tileseg.engine.runtime"
    assert owner("tileseg.training.loop") == "tileseg.training"
    assert owner("tileseg.client") == "tileseg.client"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


README_MAX_LINES = 200


def test_the_readme_is_a_front_door_whose_links_lead_somewhere():
    """The README stays short (what it is, install, three quick starts, links) and every file it links to
    exists: the rest lives in the documentation site under docs/."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    links = [t for t in re.findall(r"\]\(([^)#\s]+)", readme) if "://" not in t]
    assert links, "the README links to no page"
    missing = [t for t in links if not (REPO / t).exists()]
    assert not missing, f"the README links to files that do not exist: {missing}"
    for command in ("make serve", "make test", "make docs"):
        assert command in readme, f"the README does not give `{command}`"
