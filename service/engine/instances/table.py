"""The objects table of a run (``--objects``): one row per object, streamed to CSV or Parquet a batch at a time,
written beside the target and renamed into place only when complete."""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.engine.errors import OptionsError

TABLE_FORMATS = (".csv", ".parquet")


def check_table_path(path: str | os.PathLike) -> None:
    """Check, before any work, that a table can be written at ``path``.

    Raises:
        OptionsError: an unknown suffix, Parquet without pyarrow, or a folder that cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise OptionsError(f"objects: {path.name!r} is neither .csv nor .parquet")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise OptionsError("objects: Parquet needs the pyarrow package; install it or write .csv") from err
    existing = path.absolute().parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OptionsError(f"objects: cannot write into {path.absolute().parent}")


class ObjectTable:
    """Rows of objects appended in batches (one array per column); :meth:`finish`, :meth:`commit`,
    :meth:`discard` as every output of a run."""

    def __init__(self, path: str | os.PathLike):
        check_table_path(path)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.parquet = self.path.suffix.lower() == ".parquet"
        self._file: Any = None
        self._writer: Any = None
        self._columns: list[str] | None = None

    def write(self, columns: dict[str, np.ndarray]) -> None:
        """Append the rows of ``columns`` (the first batch fixes the columns, even an empty one)."""
        if self._columns is None:
            self._columns = list(columns)
            self._open(columns)
        if self.parquet:
            import pyarrow as pa

            self._writer.write_table(pa.table({k: np.asarray(v) for k, v in columns.items()}))
        else:
            self._writer.writerows(zip(*(_plain(columns[k]) for k in self._columns)))

    def _open(self, columns: dict[str, np.ndarray]) -> None:
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.table({k: np.asarray(v) for k, v in columns.items()}).schema
            self._writer = pq.ParquetWriter(self.tmp, schema)
        else:
            self._file = open(self.tmp, "w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(self._columns)

    def finish(self) -> None:
        if self.parquet:
            self._writer.close()
        else:
            self._file.close()

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        self.tmp.unlink(missing_ok=True)


def _plain(values) -> list:
    array = np.asarray(values)
    if array.dtype.kind == "f":
        return [repr(float(v)) for v in array]  # every digit: a table read back gives the same numbers
    return array.tolist()


__all__ = ["TABLE_FORMATS", "ObjectTable", "check_table_path"]
