"""Griffe extensions for the API reference: where ``tileseg.models`` lives, and the docstrings' reST roles.

The distribution maps its source folders onto one import name (``pyproject.toml``'s ``package-dir``):
``service/`` is the package ``tileseg`` and ``models/`` is ``tileseg.models``. Griffe finds ``tileseg`` through
the editable install, then looks for its subpackages inside ``service/`` only, so ``tileseg.models`` would be
missing and every name the engine imports from it unresolved. When Griffe has loaded ``tileseg``, this loads
the folder Python itself imports ``tileseg.models`` from, as that package's member, and Griffe reads it
statically like the rest.

The docstrings name other objects with reST roles (``:class:`SegmentOptions```, ``:func:`tileseg.models.load```)
that Markdown would print as they are; they are shown as code.
"""

from __future__ import annotations

import importlib.util
import re
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


ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")


class ReSTRoles(griffe.Extension):
    """``:class:`Name``` in a docstring becomes ```Name``` (inline code)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
