"""Zarr arrays and OME-Zarr images, read by window like any other input.

A Zarr (v2 or v3, read by zarr-python from a local folder, ``s3://`` or ``https://``: :mod:`.zarr_store`) is
either one array or a group. An array is read as it is: 2-D is one band ``(y, x)``; 3-D is ``(c, y, x)``
unless its dimension names (Zarr v3 ``dimension_names``, or xarray's ``_ARRAY_DIMENSIONS``) say where ``c``,
``y`` and ``x`` are. A group must be an OME-Zarr image (NGFF ``multiscales``, :mod:`.ngff`): its levels are the
pyramid the read plan chooses from by pixel size, as for slides, and its ``y``/``x`` scale with the axes' unit
gives the pixel size. Axes other than ``c``, ``y`` and ``x`` (``t``, ``z``) must have one position.

A Zarr carries no CRS here (GeoZarr is not read), and no nodata: every pixel is valid.
"""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path

import numpy as np

from tileseg.engine.errors import BandMismatchError, DtypeError, TooLargeError, UnreadableInputError
from tileseg.engine.io.bands import STATS_SIDE, Scaling, stretch_scaling, uint8_scaling
from tileseg.engine.io.ngff import read_multiscales
from tileseg.engine.io.pixelsize import UNKNOWN, MeasuredSize
from tileseg.engine.io.read import RasterInfo, mirrored_window
from tileseg.engine.io.remote import RemoteUrl
from tileseg.engine.io.zarr_store import ZARR_DRIVER, open_store
from tileseg.models.spec import ModelSpec

CHANNEL_NAMES = frozenset({"c", "band", "bands", "channel", "channels"})


class ZarrRaster:
    """A Zarr array or an OME-Zarr image at one pyramid level, read by window.

    Args:
        location: the Zarr's local folder or remote URL (:func:`tileseg.engine.io.inputs.locate`).
        spec: the model's spec (bands, dtypes, normalisation).
        bands: 1-based channels to read, or None for all of them.
        level: the pyramid level (0 the full resolution; an array has only level 0).
        max_pixels: the largest level-0 size accepted.

    Attributes:
        ngff: the NGFF version of an OME-Zarr image (``0.4``, ``0.5``), None for a plain array.

    Raises:
        UnreadableInputError: no Zarr there, a group that is no OME-Zarr image, a volume or time series.
        BandMismatchError, DtypeError: the model does not take these channels or this data type.
        TooLargeError: more than ``max_pixels``.
    """

    def __init__(self, location: Path | RemoteUrl, spec: ModelSpec, bands=None, level: int = 0, max_pixels=None):
        self.location, self.spec, self.level = location, spec, level
        self.name = location.name
        arrays, self.axes, self.pixel_size, self.ngff = _open(location, self.name)
        driver = ZARR_DRIVER if self.ngff is None else "OME-Zarr"
        self.levels = [(int(a.shape[self.axes.index("y")]), int(a.shape[self.axes.index("x")])) for a in arrays]
        if not 0 <= level < len(arrays):
            raise UnreadableInputError(f"{self.name} has no pyramid level {level} (it has {len(arrays)})")
        self.array = arrays[level]
        self.height, self.width = self.levels[level]
        full_h, full_w = self.levels[0]
        if max_pixels is not None and full_w * full_h > max_pixels:
            raise TooLargeError(f"{self.name} is {full_w}x{full_h} pixels; the limit is {max_pixels}")
        channels = int(self.array.shape[self.axes.index("c")]) if "c" in self.axes else 1
        self.bands = _chosen_bands(spec, bands, channels)
        self.dtype = np.dtype(self.array.dtype).name
        if self.dtype not in spec.input.dtypes:
            raise DtypeError(
                f"model {spec.name} does not take {self.dtype} input; it takes {', '.join(spec.input.dtypes)}"
            )
        self.crs, self.transform, self.has_mask, self.pixels_read = None, None, False, 0
        self.info = RasterInfo(self.name, full_w, full_h, len(self.bands), self.dtype, None, driver)
        self._lock, self._arrays = threading.Lock(), arrays

    @cached_property
    def scaling(self) -> Scaling:
        """How raw values become the network's input (for other dtypes than uint8, a decimated read, done
        when first asked: a header check reads no chunk)."""
        return uint8_scaling(self.spec) if self.dtype == "uint8" else self._stretch(self._arrays)

    def at_level(self, level: int) -> ZarrRaster:
        """The same image read at pyramid ``level`` (a new reader; the caller closes it)."""
        return ZarrRaster(self.location, self.spec, self.bands, level)

    def read_region(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """The raw ``(bands, height, width)`` values of an in-level region.

        Raises:
            UnreadableInputError: a chunk that cannot be read or decoded.
        """
        data = self._read(self.array, (slice(row, row + height), slice(col, col + width)))
        with self._lock:
            self.pixels_read += height * width
        return data

    def read_window(self, row: int, col: int, length: int) -> np.ndarray:
        """The raw ``(bands, length, length)`` window at ``(row, col)``, mirrored past the level's edges."""
        return mirrored_window(self.read_region, row, col, length, self.height, self.width)

    def read_valid(self, row: int, col: int, height: int, width: int) -> None:
        """None: a Zarr carries no nodata here, every pixel is valid."""
        return None

    def _read(self, array, yx: tuple[slice, slice]) -> np.ndarray:
        """``(bands, rows, cols)`` of ``array`` at ``yx`` (slices, with steps for a decimated read)."""
        index: list = []
        for axis in self.axes:
            index.append(yx[0] if axis == "y" else yx[1] if axis == "x" else 0)
        if "c" in self.axes:
            index[self.axes.index("c")] = np.array([b - 1 for b in self.bands])
        try:
            data = np.asarray(array.oindex[tuple(index)])
        except Exception as err:  # zarr and its stores raise their own kinds: a read that failed, for the user
            raise UnreadableInputError(f"{self.name} could not be read: {type(err).__name__}: {err}") from err
        kept = [a for a in self.axes if a in ("c", "y", "x")]
        if "c" not in kept:
            return data[None]
        return np.ascontiguousarray(data.transpose([kept.index("c"), kept.index("y"), kept.index("x")]))

    def _stretch(self, arrays) -> Scaling:
        """The 2nd-98th percentile stretch of a non-uint8 image, from a decimated read of the coarsest level
        still at least :data:`STATS_SIDE` a side (the whole image when it is smaller)."""
        side = min(STATS_SIDE, max(self.levels[0]))
        k = max((i for i, (h, w) in enumerate(self.levels) if max(h, w) >= side), key=lambda i: -max(self.levels[i]))
        step = max(1, max(self.levels[k]) // STATS_SIDE)
        sample = self._read(arrays[k], (slice(None, None, step), slice(None, None, step)))
        low, high = np.zeros(len(self.bands)), np.ones(len(self.bands))
        for i, band in enumerate(sample):
            values = band[np.isfinite(band)] if band.dtype.kind == "f" else band.ravel()
            if values.size:
                low[i], high[i] = np.percentile(values, [2, 98])
        return stretch_scaling(self.spec, low, high, clip=True)

    def close(self) -> None:
        """Nothing to release: zarr's stores hold no open files between reads."""

    def __enter__(self) -> ZarrRaster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(location: Path | RemoteUrl, name: str) -> tuple[list, tuple[str, ...], MeasuredSize, str | None]:
    """The levels' arrays, their axes (``c``, ``y``, ``x`` and others), the pixel size and the NGFF version
    (None for a plain array)."""
    import zarr

    try:
        node = zarr.open(store=open_store(location), mode="r")
    except UnreadableInputError:
        raise
    except Exception as err:  # no metadata there, or metadata zarr cannot parse
        raise UnreadableInputError(f"{name} is not a Zarr zarr-python can open: {type(err).__name__}: {err}") from err
    if isinstance(node, zarr.Array):
        return [node], _array_axes(node), UNKNOWN, None
    multiscales = read_multiscales(node.attrs.asdict(), name)
    if multiscales is None:
        raise UnreadableInputError(
            f"{name} is a Zarr group, not an OME-Zarr image (no NGFF multiscales): name one of its arrays, "
            f"e.g. {name}/{next(iter(node.array_keys()), 'ARRAY')}"
        )
    axes = tuple("c" if a in CHANNEL_NAMES else a for a in multiscales.axes)
    arrays = [node[path] for path in multiscales.paths]
    _check_other_axes(arrays[0], axes, name)
    return arrays, axes, multiscales.pixel_size, multiscales.version


def _array_axes(array) -> tuple[str, ...]:
    """A plain array's axes: its dimension names where they name ``y`` and ``x``, else ``(y, x)`` or
    ``(c, y, x)`` by rank."""
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    if names and len(names) == array.ndim:
        axes = tuple("c" if str(n).lower() in CHANNEL_NAMES else str(n).lower() for n in names)
        if "y" in axes and "x" in axes:
            _check_other_axes(array, axes, "the array")
            return axes
    if array.ndim not in (2, 3):
        raise UnreadableInputError(
            f"a Zarr array of {array.ndim} dimensions without dimension names y and x: give a 2-D (y, x) or "
            "3-D (c, y, x) array"
        )
    return ("y", "x") if array.ndim == 2 else ("c", "y", "x")


def _check_other_axes(array, axes: tuple[str, ...], name: str) -> None:
    for axis, size in zip(axes, array.shape, strict=True):
        if axis not in ("c", "y", "x") and size != 1:
            raise UnreadableInputError(
                f"{name} has {size} positions along its {axis!r} axis: give one image (a single t and z)"
            )


def _chosen_bands(spec: ModelSpec, bands, channels: int) -> tuple[int, ...]:
    """The 1-based channels to read: ``bands``, else all; as many as the model takes."""
    chosen = tuple(bands) if bands else tuple(range(1, channels + 1))
    bad = [b for b in chosen if not 1 <= b <= channels]
    if bad:
        raise BandMismatchError(f"band {bad[0]} does not exist: the input has bands 1..{channels}")
    if len(chosen) != spec.input.bands:
        hint = f"; choose {spec.input.bands} with --bands" if len(chosen) > spec.input.bands and not bands else ""
        raise BandMismatchError(
            f"model {spec.name} takes {spec.input.bands} band(s), the input gives {len(chosen)}{hint}"
        )
    return chosen


__all__ = ["ZarrRaster"]
