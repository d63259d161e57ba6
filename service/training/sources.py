"""The data set adapters by name: what ``tileseg train --dataset`` takes."""

from __future__ import annotations

from pathlib import Path

from tileseg.training.data import DataSource, dubai, folder, isbi2012
from tileseg.training.errors import TrainingDataError
from tileseg.training.nuclei import dsb2018

ADAPTERS = {"isbi2012": isbi2012, "dubai": dubai, "dsb2018": dsb2018, "folder": folder}


def open_source(kind: str, root: str | Path, **options) -> DataSource:
    """The adapter ``kind`` applied to ``root``; ``options`` go to the folder adapter only."""
    if kind not in ADAPTERS:
        raise TrainingDataError(f"unknown data set kind {kind!r}; valid: {', '.join(ADAPTERS)}")
    if not Path(root).is_dir():
        raise TrainingDataError(f"no data folder {root}")
    return ADAPTERS[kind](root, **options) if kind == "folder" else ADAPTERS[kind](root)
