"""Which reader owns an input, decided by its content: OpenSlide for a vendor's whole-slide image, GDAL
(rasterio) for everything else.

:func:`open_input` opens the reader a run reads windows from; :func:`inspect_input` makes the same choice
and reads headers only (size, format, bands, dtype, pyramid levels, pixel size), for a service that must
answer a request at once and refuse a decompression bomb before anything is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tileseg.engine.io import pixelsize
from tileseg.engine.io.pixelsize import MeasuredSize
from tileseg.engine.io.read import (
    ALLOWED_DRIVERS,
    InputRaster,
    RasterInfo,
    check_dtype,
    gdal_env,
    level_sizes,
    open_raster,
    probe,
    select_bands,
)
from tileseg.engine.io.remote import RemoteUrl, configure_remote_reads, parse_remote
from tileseg.engine.io.slide import SLIDE_DRIVER, SlideRaster, slide_format
from tileseg.errors import UnsupportedFormatError
from tileseg.models.spec import ModelSpec


@dataclass(frozen=True)
class InputHeader:
    """What an input's headers say.

    Attributes:
        info: name, size, bands, dtype, CRS and reader (``GTiff``, ``OpenSlide:aperio``, ...).
        levels: ``(height, width)`` of each pyramid level, level 0 first.
        pixel_size: the pixel size its metadata gives, and where from.
    """

    info: RasterInfo
    levels: list[tuple[int, int]]
    pixel_size: MeasuredSize


def slide_vendor(path: Path, allowed_drivers: frozenset[str] = ALLOWED_DRIVERS) -> str | None:
    """OpenSlide's vendor name when ``path`` is a whole-slide image (OpenSlide then reads it), else None.

    Raises:
        UnsupportedFormatError: a slide, and slides are not among ``allowed_drivers``.
    """
    vendor = slide_format(path) if path.is_file() else None
    if vendor is not None and SLIDE_DRIVER not in allowed_drivers:
        raise UnsupportedFormatError(f"{path.name} is a whole-slide image ({vendor}); this server takes none")
    return vendor


def open_input(
    source, spec: ModelSpec, bands=None, allowed_drivers=ALLOWED_DRIVERS, max_pixels: int | None = None
) -> InputRaster | SlideRaster:
    """The reader that owns ``source``, at level 0 (the caller closes it).

    ``source`` is a local path, or an ``s3://``, ``https://`` or ``http://`` URL of a raster GDAL reads by
    range requests (:mod:`.remote`); whole-slide images are read from local files only.

    Raises:
        UnreadableInputError, UnsupportedFormatError, TooLargeError, BandMismatchError, DtypeError.
    """
    path = locate(source)
    if isinstance(path, Path) and slide_vendor(path, allowed_drivers) is not None:
        return SlideRaster(path, spec, bands, 0, max_pixels)
    return InputRaster(path, spec, bands, allowed_drivers - {SLIDE_DRIVER}, max_pixels)


def locate(source) -> Path | RemoteUrl:
    """A local path, or the :class:`RemoteUrl` that ``source`` names (with the remote reads configured)."""
    remote = source if isinstance(source, RemoteUrl) else parse_remote(source)
    if remote is None:
        return Path(source)
    configure_remote_reads()
    return remote


def inspect_input(
    source, spec: ModelSpec, bands=None, allowed_drivers=ALLOWED_DRIVERS, max_pixels: int | None = None
) -> InputHeader:
    """Check from headers that ``spec``'s model can read ``source`` (as :func:`open_input` would), decoding
    no pixels: a slide's pyramid and properties come from OpenSlide, which decodes one tile to prove the
    slide readable; a raster's from GDAL's headers and TIFF block index.

    Raises:
        UnreadableInputError (not an image, truncated, a slide that does not open), UnsupportedFormatError,
        TooLargeError, BandMismatchError, DtypeError.
    """
    path = locate(source)
    if isinstance(path, Path) and slide_vendor(path, allowed_drivers) is not None:
        with SlideRaster(path, spec, bands, 0, max_pixels) as slide:
            return InputHeader(slide.info, list(slide.levels), slide.pixel_size)
    info = probe(path, allowed_drivers - {SLIDE_DRIVER}, max_pixels)
    with gdal_env(), open_raster(path) as src:
        chosen, _alpha = select_bands(src, spec, bands)
        check_dtype(src, spec, chosen)
        return InputHeader(info, level_sizes(path, src, chosen[0]), pixelsize.from_dataset(src))


__all__ = ["InputHeader", "inspect_input", "locate", "open_input", "slide_vendor"]
