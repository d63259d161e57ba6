"""Raster input and output with rasterio: windows in, windows out.

A *window* is a rectangle of pixels; reading one decodes only the blocks it touches, so memory follows
the window, not the image. The input side checks, once, that a raster can feed a model (format, size,
bands, dtype), works out how to scale its values, and then reads mirror-padded, normalised windows and
validity masks, one dataset handle per reader thread (GDAL handles are not shared across threads). The
output side writes finished rows in block-aligned strips to a temporary file that only becomes the
result, by an atomic rename, once it is complete.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio._path import _parse_path
from rasterio.enums import MaskFlags
from rasterio.env import env_ctx_if_needed
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from tileseg.config import engine_config
from tileseg.engine.errors import TooLargeError, UnreadableInputError, UnsupportedFormatError
from tileseg.engine.io import gdalconfig, pinning, pixelsize
from tileseg.engine.io.bands import band_scaling, select_bands
from tileseg.engine.io.remote import RemoteUrl, not_answered, remote_failure
from tileseg.models.spec import ModelSpec, reflect_indices

# Formats accepted as input, by GDAL driver (decided from the content, not the name). VRT is left out on
# purpose: a VRT names other files, which would let a request reach outside what it was given.
ALLOWED_DRIVERS = frozenset({"GTiff", "COG", "PNG", "JPEG", "JP2OpenJPEG", "BMP", "WEBP", "OpenSlide"})
# Whole-slide formats OpenSlide reads from local files only: from object storage GDAL reads Aperio SVS and
# tiled TIFF (level 0 and the pyramid GDAL sees), nothing else of these.
SLIDE_SUFFIXES = (".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".dcm", ".svslide", ".isyntax", ".czi")
REMOTE_SLIDE_HINT = (
    "; whole-slide formats other than Aperio SVS and tiled TIFF are read from local files only (OpenSlide): "
    "download the slide first"
)
OUTPUT_BLOCK = 512


# GDAL's block cache is one per process and sizes itself once, at its first use, from GDAL_CACHEMAX (by
# default 5 % of the machine's memory): a configuration set for one thread (rasterio.Env) does not reach
# the reader threads, so the bound is set for the whole process here, before any raster is read. Without it
# the cache fills with every block of a large image: 1.5 GB of peak memory on a 20000^2 scene, not 0.7.


def gdal_env(**options: Any) -> rasterio.Env:
    """A GDAL environment with a bounded block cache, so memory does not grow with the image, and the remote
    reads' process-wide options applied (:mod:`.gdalconfig`: the one place every mode's reads are configured)."""
    gdalconfig.apply()
    return rasterio.Env(GDAL_CACHEMAX=engine_config().gdal_cache_mb * 1024 * 1024, GDAL_NUM_THREADS=1, **options)


@dataclass(frozen=True)
class RasterInfo:
    """What a raster is, as the job record and the CLI report it."""

    name: str
    width: int
    height: int
    bands: int
    dtype: str
    crs: str | None
    driver: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "bands": self.bands,
            "dtype": self.dtype,
            "crs": self.crs,
        }


def source_name(path) -> str:
    """The name a raster is reported under: a file's name, or a URL's last segment."""
    return path.name if isinstance(path, RemoteUrl) else Path(path).name


def open_raster(
    path: str | os.PathLike | RemoteUrl,
    overview: int | None = None,
    drivers: Iterable[str] | None = None,
    threads: int = 1,
) -> rasterio.io.DatasetReader:
    """Open a raster for reading (its overview ``overview``, 0-based, if given), turning GDAL's failures into
    :class:`UnreadableInputError`; a remote raster's URL appears in messages masked.

    Args:
        drivers: the GDAL drivers that may open it (GDALOpenEx's allowed drivers): no other is even tried, so a
            VRT (which names other files) or a format nobody asked for never gets to parse the bytes. None: any.
        threads: threads that decode the blocks of one read (GeoTIFF's ``NUM_THREADS``; give it for a GeoTIFF
            only, other drivers warn about it).
    """
    if isinstance(path, RemoteUrl):
        gdalconfig.apply()  # reader threads open here without entering gdal_env
        pinning.prepare(path.url)
        where, label, scrub = path.gdal_path, path.masked, path.scrub
    else:
        path = Path(path)
        if not path.is_file():
            raise UnreadableInputError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise UnreadableInputError(f"{path.name}: the file is empty")
        where, label, scrub = str(path), path.name, str
    allowed = None if drivers is None else gdal_drivers(drivers)
    if allowed is not None and not allowed:
        raise UnsupportedFormatError(
            f"{label}: none of the accepted formats ({', '.join(sorted(drivers or ()))}) is a GDAL driver here"
        )
    kwargs: dict[str, Any] = {} if overview is None else {"overview_level": overview}
    if threads > 1:
        kwargs["NUM_THREADS"] = str(threads)
    started = time.monotonic()
    try:
        with warnings.catch_warnings(), env_ctx_if_needed():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            # rasterio.open takes one driver name only; its reader takes GDAL's list of allowed drivers
            return DatasetReader(_parse_path(where), driver=allowed, **kwargs)
    except RasterioError as err:
        seconds = time.monotonic() - started
        # a header cut short by a stall reads as a broken TIFF: an open that took the read time-out did stall
        if isinstance(path, RemoteUrl) and (not_answered(str(err)) or seconds >= engine_config().http_read_timeout):
            raise remote_failure(path, err, seconds) from err
        if isinstance(path, RemoteUrl) and "not recognized as" in str(err):
            from tileseg.engine.io.fetch import range_refusal  # a server without Range, not a format

            refusal = range_refusal(path)
            if refusal is not None:
                raise refusal from err
        hint = REMOTE_SLIDE_HINT if isinstance(path, RemoteUrl) and path.name.lower().endswith(SLIDE_SUFFIXES) else ""
        if allowed is not None:
            raise UnreadableInputError(
                f"{label} is not a raster in a format accepted here ({', '.join(allowed)}): {scrub(str(err))}{hint}"
            ) from err
        raise UnreadableInputError(f"{label} is not a raster GDAL can read: {scrub(str(err))}") from err


@functools.cache
def _registered_drivers() -> frozenset[str]:
    with rasterio.Env() as env:
        return frozenset(env.drivers())


def gdal_drivers(names: Iterable[str]) -> list[str]:
    """Of the format names ``names`` (:data:`ALLOWED_DRIVERS`' spelling), those GDAL can open files with, sorted:
    ``COG`` is GTiff's writer and ``OpenSlide`` the slide reader's, neither a GDAL driver that opens."""
    return sorted(n for n in set(names) if n in _registered_drivers() and n != "COG")


def probe(
    path: str | os.PathLike | RemoteUrl, allowed_drivers=ALLOWED_DRIVERS, max_pixels: int | None = None
) -> RasterInfo:
    """Read a raster's header (no pixels) and check its format and size.

    Raises:
        UnreadableInputError, UnsupportedFormatError, TooLargeError.
    """
    name = source_name(path)
    with gdal_env(), open_raster(path, drivers=allowed_drivers) as src:
        if src.driver not in allowed_drivers:
            raise UnsupportedFormatError(
                f"{name} is a {src.driver} raster; accepted formats: {', '.join(sorted(allowed_drivers))}"
            )
        if max_pixels is not None and src.width * src.height > max_pixels:
            raise TooLargeError(
                f"{name} is {src.width}x{src.height} = {src.width * src.height} pixels; the limit is {max_pixels}"
            )
        # a remote object's length would cost a request of its own; a block past its end fails the read instead
        if src.driver in ("GTiff", "COG") and not isinstance(path, RemoteUrl):
            check_complete(src, Path(path))
        return RasterInfo(
            name=name,
            width=src.width,
            height=src.height,
            bands=src.count,
            dtype=src.dtypes[0],
            crs=src.crs.to_string() if src.crs else None,
            driver=src.driver,
        )


MAX_BLOCK_CHECKS = 2_000_000  # block index entries compared with the file's length, at most


def check_complete(src, path: Path) -> None:
    """Refuse a TIFF whose block index points past the end of the file (cut off in transfer), from the
    index alone: GDAL opens such a file and would only fail once a run reached the missing blocks."""
    size = path.stat().st_size
    block_rows, block_cols = src.block_shapes[0]
    across = -(-src.width // block_cols)
    down = -(-src.height // block_rows)
    planes = range(1, src.count + 1) if src.profile.get("interleave") == "band" else range(1, 2)
    if across * down * len(planes) > MAX_BLOCK_CHECKS:
        return
    for band in planes:
        for y in range(down):
            for x in range(across):
                offset = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=band)
                length = src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=band)
                if offset is not None and length is not None and int(offset) + int(length) > size:
                    raise UnreadableInputError(
                        f"{path.name} is truncated: its block ({x}, {y}) of band {band} "
                        f"ends past the end of the file ({size} bytes)"
                    )


def mirrored_window(read_region, row: int, col: int, length: int, height: int, width: int) -> np.ndarray:
    """The ``(bands, length, length)`` window at ``(row, col)`` of a ``height`` x ``width`` image whose in-image
    regions ``read_region(row, col, rows, cols)`` reads: positions outside the image are mirrored from it
    (reflect, without repeating the edge pixel), reading only the in-image rectangle that the window needs."""
    rows = reflect_indices(row, length, height)
    cols = reflect_indices(col, length, width)
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    data = read_region(r0, c0, r1 - r0, c1 - c0)
    # np.take, not fancy indexing: it gives a C-contiguous array, which the runtimes take without a copy (an
    # edge window cost two copies before: 10-14 ms against 5-6 ms for a 1568-px window of three bands)
    if not (row == r0 and r1 - r0 == length):
        data = np.take(data, rows - r0, axis=1)
    if not (col == c0 and c1 - c0 == length):
        data = np.take(data, cols - c0, axis=2)
    return data


def level_sizes(path: Path | RemoteUrl, src, band: int = 1) -> list[tuple[int, int]]:
    """``(height, width)`` of level 0 and of each of GDAL's overviews of ``band`` (read from their headers)."""
    sizes = [(src.height, src.width)]
    for k in range(len(src.overviews(band))):
        with open_raster(path, overview=k, drivers=(src.driver,)) as ov:
            sizes.append((ov.height, ov.width))
    return sizes


class ThreadDatasets:
    """One open dataset per reader thread (a GDAL handle must not be shared between threads), made on first
    use by ``opener`` and closed all together."""

    def __init__(self, opener: Callable[[], Any]):
        self._open = opener
        self._local = threading.local()
        self._handles: list = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        """This thread's dataset."""
        src = getattr(self._local, "src", None)
        if src is None:
            src = self._open()
            self._local.src = src
            with self._lock:
                self._handles.append(src)
        return src

    def close(self) -> None:
        with self._lock:
            for src in self._handles:
                src.close()
            self._handles.clear()


class InputRaster:
    """A checked input raster that reads normalised, mirror-padded windows; safe to use from many threads.

    Every input reader has the members that :func:`tileseg.engine.predict_strips` and the writer use:
    ``height``, ``width``, ``scaling``, ``read_window``, ``read_valid``; the file readers add ``info``,
    ``crs``, ``transform``, ``read_region`` (raw in-image values), ``levels`` (the pyramid's level sizes),
    ``pixel_size`` (from the metadata), ``at_level`` and ``pixels_read`` (a count of pixels decoded).

    Args:
        path: the raster.
        spec: the model's spec (bands, dtypes, normalisation).
        bands: explicit 1-based band selection, or None.
        allowed_drivers, max_pixels: what to accept.
        level: the pyramid level to read: 0 the full resolution, ``k`` GDAL's overview ``k - 1``.
        decode_threads: threads that decode a GeoTIFF's blocks for the thread that makes the reader, which
            reads in turn with the network (the network's cores wait on the read, so it may take them all);
            reader threads ahead of the network decode with one each, beside it.

    Raises:
        UnreadableInputError, UnsupportedFormatError, TooLargeError, BandMismatchError, DtypeError.
    """

    def __init__(
        self,
        path,
        spec: ModelSpec,
        bands: tuple[int, ...] | None = None,
        allowed_drivers=ALLOWED_DRIVERS,
        max_pixels: int | None = None,
        level: int = 0,
        decode_threads: int = 1,
    ):
        self.path = path if isinstance(path, RemoteUrl) else Path(path)
        self.info = probe(self.path, allowed_drivers, max_pixels)
        self.drivers = (self.info.driver,)  # every later open takes the driver that opened it, no other
        self.spec, self.level, self.pixels_read = spec, level, 0
        self.decode_threads = decode_threads
        self._lock = threading.Lock()
        level_below = self.level - 1 if self.level else None
        owner = threading.get_ident()

        def opener():
            threads = decode_threads if threading.get_ident() == owner and self.info.driver == "GTiff" else 1
            return open_raster(self.path, level_below, self.drivers, threads)

        self._datasets = ThreadDatasets(opener)
        src = self._dataset()
        self.bands, self.alpha = select_bands(src, spec, bands)
        self.scaling = band_scaling(src, spec, self.bands)
        # A mask is read only when the raster has one: nodata, an internal mask or alpha.
        flags = [src.mask_flag_enums[b - 1] for b in self.bands]
        self.has_mask = self.alpha is not None or any(MaskFlags.all_valid not in f for f in flags)
        self.profile = src.profile
        self.crs, self.transform = src.crs, src.transform
        self.height, self.width = src.height, src.width
        self.levels = self._levels(src)
        self.pixel_size = pixelsize.from_dataset(src)

    def _levels(self, src) -> list[tuple[int, int]]:
        return [] if self.level else level_sizes(self.path, src, self.bands[0])

    def at_level(self, level: int) -> InputRaster:
        """The same raster read at pyramid ``level`` (a new reader; the caller closes it).

        Raises:
            UnreadableInputError: the raster has no such level.
        """
        if not 0 <= level < len(self.levels):
            raise UnreadableInputError(f"{self.info.name} has no pyramid level {level} (it has {len(self.levels)})")
        return InputRaster(
            self.path, self.spec, self.bands, frozenset({self.info.driver}), None, level, self.decode_threads
        )

    def _dataset(self):
        return self._datasets.get()

    def close(self) -> None:
        self._datasets.close()

    def __enter__(self) -> InputRaster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read_window(self, row: int, col: int, length: int) -> np.ndarray:
        """The raw ``(bands, length, length)`` window whose first pixel is ``(row, col)``, uint8 as it is and
        any other dtype as float32; positions outside the image are mirrored from it."""
        data = mirrored_window(self.read_region, row, col, length, self.height, self.width)
        return data if data.dtype == np.uint8 else data.astype(np.float32)

    def read_region(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """The raw ``(bands, height, width)`` values of an in-image region, in the file's dtype."""
        with self._lock:
            self.pixels_read += height * width
        return self._read(lambda src: src.read(self.bands, window=Window(col, row, width, height)))

    def read_valid(self, row: int, col: int, height: int, width: int) -> np.ndarray | None:
        """A boolean ``(height, width)`` validity mask of an in-image region, or None when all is valid."""
        if not self.has_mask:
            return None
        window = Window(col, row, width, height)
        if self.alpha is not None:
            mask = self._read(lambda src: src.read(self.alpha, window=window))
        else:
            # valid where any selected band is valid, as GDAL's dataset mask is: a zero in one band is data
            mask = self._read(
                lambda src: np.max(np.stack([src.read_masks(b, window=window) for b in self.bands]), axis=0)
            )
        valid = mask > 0
        return None if valid.all() else valid

    def _read(self, fn):
        started = time.monotonic()
        try:
            return fn(self._dataset())
        except RasterioError as err:
            # a failed block read raises here (never a block of zeros): after GDAL's retries, the run fails
            if isinstance(self.path, RemoteUrl):
                raise remote_failure(self.path, err, time.monotonic() - started) from err
            raise UnreadableInputError(f"{self.info.name} could not be read (truncated or corrupt?): {err}") from err
