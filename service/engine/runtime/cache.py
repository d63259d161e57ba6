"""The tuner's measurements on disk: one JSON file (``runtime.json`` in the cache folder) keyed by checkpoint hash,
device, library versions and model options, so that every process on the machine (CLI, server, workers) takes the
same choice at no cost once one has measured.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tileseg.engine.runtime.choice import Measurement
from tileseg.engine.runtime.export import cache_dir
from tileseg.models.base import SegmentationNet

log = logging.getLogger(__name__)


class MeasurementCache:
    """Measurements on disk, one JSON file: per key, the points measured and the searches done.

    A cache that cannot be read or written is left alone with one log line: measuring again is the worst case.
    """

    def __init__(self, path: Path | None = None):
        self.path = path or default_cache_path()

    def get(self, key: str) -> dict[str, Any]:
        entry = self._read().get(key) or {}
        try:
            points = [Measurement(**m) for m in entry.get("measurements", [])]
        except TypeError:  # an entry written by another version
            return empty_entry()
        return {
            "measurements": points,
            "searches": list(entry.get("searches", [])),
            "paths": dict(entry.get("paths", {})),
            "refused": dict(entry.get("refused", {})),
        }

    def merge(self, key: str, measured: list[Measurement], searches: list[str], **records: dict) -> dict[str, Any]:
        """Add points and searches (and ``paths``/``refused`` records) to the entry of ``key``; what is already
        there wins (so that two processes measuring at once end up with one choice). Returns the entry."""
        merged = merge_entry(self.get(key), measured, searches, **records)
        data = self._read()
        data[key] = {
            "measurements": [asdict(m) for m in merged["measurements"]],
            "searches": merged["searches"],
            "paths": merged["paths"],
            "refused": merged["refused"],
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self._write(data)
        return merged

    def forget_windows(self, key: str) -> None:
        """Drop the points and searches of ``key``, keeping its numeric paths and refusals: the window and the
        batch are measured anew, and the values stay those of the path already chosen."""
        data = self._read()
        if key in data:
            data[key] = without_windows(data[key])
            self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path)
        except OSError as err:
            log.warning("runtime measurements not cached (%s): %s", self.path, err)
            tmp.unlink(missing_ok=True)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            log.warning("runtime measurement cache %s is unreadable, measuring again: %s", self.path, err)
            return {}


def empty_entry() -> dict[str, Any]:
    """A model's record before anything is measured: points, searches done, numeric paths chosen (by the
    candidates they were chosen among) and runtimes refused as not tile-invariant."""
    return {"measurements": [], "searches": [], "paths": {}, "refused": {}}


def without_windows(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` without its points and searches, its numeric paths and refusals kept (``tune --again``)."""
    return {**entry, "measurements": [], "searches": []}


def merge_entry(entry: dict[str, Any], measured: list[Measurement], searches: list[str], **records: dict):
    """``entry`` with new points, searches and records added; what it holds already wins."""
    kept = {m.point: m for m in entry["measurements"]}
    for m in measured:
        kept.setdefault(m.point, m)
    return {
        "measurements": list(kept.values()),
        "searches": sorted(set(entry["searches"]) | set(searches)),
        **{name: {**records.get(name, {}), **entry[name]} for name in ("paths", "refused")},
    }


def default_cache_path() -> Path:
    """``runtime.json`` in :func:`tileseg.engine.runtime.export.cache_dir`."""
    return cache_dir() / "runtime.json"


def model_key(model: SegmentationNet) -> str | None:
    """The checkpoint's hash, or None for a network that was not loaded from one (it is measured per process)."""
    path = getattr(model, "checkpoint_path", None)
    if path is None:
        return None
    from tileseg import models

    return models.card_hash(path)


__all__ = ["MeasurementCache", "default_cache_path", "empty_entry", "merge_entry", "model_key", "without_windows"]
