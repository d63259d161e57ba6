"""``DIR/manifest.jsonl``: one JSON line per input and attempt, appended whole.

A line is written with one ``write`` of the whole line on a file opened for appending, then flushed to disk
(``fsync``) before the run goes on, so a line is either there whole or not at all; a reader skips a line torn
by a crash of the machine (not JSON), and the next line written starts on a line of its own. Keys:

* ``input``: the input as given (URLs masked: no token or signature), ``name``: its folder under DIR;
* ``status``: :class:`Status`; ``error`` (one line) for ``failed`` and ``interrupted``;
* ``outputs``: each output's path relative to DIR (``outputs.mask`` always);
* ``seconds``, ``pixels`` (width x height read), ``runtime`` and ``device`` (what the tuner chose);
* ``options_hash``: the model, the run's options and the output formats, hashed (:func:`options_hash`);
* ``stamp``: the mask's size and modification time when it was recorded, ``at``: when (UTC, ISO 8601).

Only the runner's one process writes the manifest (workers hand their records back to it).
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"


class Status(str, enum.Enum):
    """What became of an input in one attempt."""

    SUCCEEDED = "succeeded"  # its outputs are in place
    FAILED = "failed"  # it could not be segmented (``error`` says why); the run went on
    SKIPPED = "skipped"  # an earlier attempt succeeded with the same options and its outputs are there
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C (SIGINT) or SIGTERM; none of its outputs was left


def options_hash(settings: dict[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of ``settings`` as canonical JSON (sorted keys)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def stamp(path: Path) -> list[int] | None:
    """A file's size and modification time in nanoseconds (a folder's: 0 and its own), or None if missing:
    outputs replaced since they were recorded no longer match it."""
    try:
        info = path.stat()
    except OSError:
        return None
    return [0 if path.is_dir() else info.st_size, info.st_mtime_ns]


class Manifest:
    """The manifest of one output folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / MANIFEST

    def records(self) -> list[dict[str, Any]]:
        """Every whole line, in order (a torn line is skipped)."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def latest(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The last attempt of each input by ``(name, input)``, attempts recorded as skipped left out (a skip
        repeats the attempt it relied on)."""
        latest = {}
        for record in self.records():
            if record.get("status") != Status.SKIPPED.value:
                latest[(str(record.get("name")), str(record.get("input")))] = record
        return latest

    def done(self, record: dict[str, Any] | None, settings_hash: str) -> bool:
        """Whether ``record`` says its input is done with these options: it succeeded, with the same hash, and
        its outputs are all there, the mask unchanged since."""
        if record is None or record.get("status") != Status.SUCCEEDED.value:
            return False
        if record.get("options_hash") != settings_hash:
            return False
        outputs = record.get("outputs") or {}
        if "mask" not in outputs or not all((self.folder / p).exists() for p in outputs.values()):
            return False
        return stamp(self.folder / outputs["mask"]) == record.get("stamp")

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line, in one write, and flush it to disk."""
        line = json.dumps({**record, "at": record.get("at") or now()}, sort_keys=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size and not self._ends_in_newline():
                line = "\n" + line  # after a torn last line, start a line of our own
            data = line.encode()
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"{self.path}: wrote {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _ends_in_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


__all__ = ["MANIFEST", "Manifest", "Status", "options_hash", "stamp"]
