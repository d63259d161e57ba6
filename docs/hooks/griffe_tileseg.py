"""A Griffe extension for the API reference: ``tileseg.models`` lives in ``models/``, not in ``service/models/``.

The distribution maps its source folders onto one import name (``pyproject.toml``'s ``package-dir``):
``service/`` is the package ``tileseg`` and ``models/`` is ``tileseg.models``. Griffe finds ``tileseg`` through
the editable install, then looks for its subpackages inside ``service/`` only, so ``tileseg.models`` would be
missing and every name the engine imports from it unresolved. When Griffe has loaded ``tileseg``, this loads
the folder Python itself imports ``tileseg.models`` from, as that package's member, and Griffe reads it
statically like the rest.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import griffe

# subpackages that live outside the top package's folder, as setuptools maps them
MAPPED = ("models",)


class MappedSubpackages(griffe.Extension):
    """Load ``tileseg``'s subpackages that the ``package-dir`` mapping puts in folders of their own."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "tileseg":
            return
        for name in MAPPED:
            if name in pkg.members:
                continue
            spec = importlib.util.find_spec(f"tileseg.{name}")  # finds it without importing it
            if spec is None or spec.origin is None:
                raise ModuleNotFoundError(f"tileseg.{name} is not installed: pip install -e '.[docs]'")
            # GriffeLoader has no public way to add a subpackage from another folder: its own loading step
            module = loader._load_module(name, Path(spec.origin), parent=pkg)
            pkg.set_member(name, module)
