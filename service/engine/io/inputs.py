"""Which reader owns an input, decided by its content: OpenSlide for a vendor's whole-slide image, GDAL
(rasterio) for everything else.

:func:`open_input` opens the reader a run reads windows from; :func:`inspect_input` makes the same choice
and reads headers only (size, format, bands, dtype, pyramid levels, pixel size), for a service that must
answer a request at once and refuse a decompression bomb before anything is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tileseg.engine.errors import BandMismatchError, UnreadableInputError, UnsupportedFormatError
from tileseg.engine.io import pixelsize
from tileseg.engine.io.bands import check_dtype, select_bands
from tileseg.engine.io.pixelsize import MeasuredSize
from tileseg.engine.io.read import (
    ALLOWED_DRIVERS,
    InputRaster,
    RasterInfo,
    gdal_env,
    level_sizes,
    open_raster,
    probe,
)
from tileseg.engine.io.remote import RemoteUrl, configure_remote_reads, parse_remote
from tileseg.engine.io.slide import SLIDE_DRIVER, SlideRaster, slide_format
from tileseg.engine.io.stac import StacItem, StacSource, is_item_name, read_item
from tileseg.engine.io.stack import StackedRaster
from tileseg.engine.io.zarr_raster import ZarrRaster
from tileseg.engine.io.zarr_store import is_zarr
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
    source,
    spec: ModelSpec,
    bands=None,
    allowed_drivers=ALLOWED_DRIVERS,
    max_pixels: int | None = None,
    asset: str | None = None,
    decode_threads: int = 1,
) -> InputRaster | SlideRaster | StackedRaster | ZarrRaster:
    """The reader that owns ``source``, at level 0 (the caller closes it).

    ``source`` is a local path, an ``s3://``, ``https://`` or ``http://`` URL of a raster GDAL reads by range
    requests (:mod:`.remote`), or a STAC item (:mod:`.stac`: a ``.json`` path or URL, or what :func:`locate`
    made of one): ``asset`` picks one of its assets, ``bands`` as common names stack several. Whole-slide
    images are read from local files only. ``decode_threads``: see :class:`InputRaster`.

    Raises:
        UnreadableInputError, UnsupportedFormatError, TooLargeError, BandMismatchError, DtypeError, InputError.
    """
    path = locate(source, asset, bands)
    if isinstance(path, StacSource):
        if path.names:
            return StackedRaster(path, spec, allowed_drivers - {SLIDE_DRIVER}, max_pixels)
        path = locate(path.assets()[0].href)
    numbers = _band_numbers(bands)
    if is_zarr(path):  # Zarr and OME-Zarr (a folder of objects): zarr-python reads them, not GDAL
        return ZarrRaster(path, spec, numbers, 0, max_pixels)
    if isinstance(path, Path) and slide_vendor(path, allowed_drivers) is not None:
        return SlideRaster(path, spec, numbers, 0, max_pixels)
    return InputRaster(path, spec, numbers, allowed_drivers - {SLIDE_DRIVER}, max_pixels, 0, decode_threads)


def locate(source, asset: str | None = None, bands=None) -> Path | RemoteUrl | StacSource:
    """A local path, the :class:`RemoteUrl` that ``source`` names (with the remote reads configured), or a
    STAC item to read from (its JSON read now): when ``source`` names one (``.json``), or ``asset`` or band
    names (``bands`` of text) are given.

    Raises:
        UnreadableInputError: a STAC item that cannot be read; a URL of a scheme that is not read.
    """
    names = tuple(bands) if bands and isinstance(bands[0], str) else None
    if isinstance(source, StacSource):
        return source
    if isinstance(source, StacItem):
        return StacSource(source, asset, names)
    if is_item_name(source) or asset or names:
        try:
            return StacSource(read_item(source), asset, names)
        except UnreadableInputError as err:
            if asset or is_item_name(source):
                raise
            _band_numbers(bands)  # band names for a raster: say that, not that it is no JSON
            raise err from None
    remote = source if isinstance(source, RemoteUrl) else parse_remote(source)
    if remote is None:
        return Path(source)
    configure_remote_reads()
    return remote


def _band_numbers(bands) -> tuple[int, ...] | None:
    """``bands`` when they are band numbers; band names are for STAC items only.

    Raises:
        BandMismatchError: band names for an input that is not a STAC item.
    """
    if bands and isinstance(bands[0], str):
        raise BandMismatchError(
            f"--bands {','.join(bands)}: band names pick the assets of a STAC item; this input is one raster, "
            "give band numbers (e.g. 1,2,3)"
        )
    return tuple(bands) if bands else None


def inspect_input(
    source,
    spec: ModelSpec,
    bands=None,
    allowed_drivers=ALLOWED_DRIVERS,
    max_pixels: int | None = None,
    asset: str | None = None,
) -> InputHeader:
    """Check from headers that ``spec``'s model can read ``source`` (as :func:`open_input` would), decoding
    no pixels: a slide's pyramid and properties come from OpenSlide, which decodes one tile to prove the
    slide readable; a raster's from GDAL's headers and TIFF block index; a STAC item's from its JSON and its
    assets' headers.

    Raises:
        UnreadableInputError (not an image, truncated, a slide that does not open), UnsupportedFormatError,
        TooLargeError, BandMismatchError, DtypeError, InputError.
    """
    path = locate(source, asset, bands)
    if isinstance(path, StacSource):
        if path.names:
            with StackedRaster(path, spec, allowed_drivers - {SLIDE_DRIVER}, max_pixels, scale=False) as stack:
                return InputHeader(stack.info, list(stack.levels), stack.pixel_size)
        path = locate(path.assets()[0].href)
    numbers = _band_numbers(bands)
    if is_zarr(path):  # Zarr and OME-Zarr: their metadata documents only, no chunk decoded
        with ZarrRaster(path, spec, numbers, 0, max_pixels) as zarr_image:
            return InputHeader(zarr_image.info, list(zarr_image.levels), zarr_image.pixel_size)
    if isinstance(path, Path) and slide_vendor(path, allowed_drivers) is not None:
        with SlideRaster(path, spec, numbers, 0, max_pixels) as slide:
            return InputHeader(slide.info, list(slide.levels), slide.pixel_size)
    info = probe(path, allowed_drivers - {SLIDE_DRIVER}, max_pixels)
    with gdal_env(), open_raster(path, drivers=(info.driver,)) as src:
        chosen, _alpha = select_bands(src, spec, numbers)
        check_dtype(src, spec, chosen)
        return InputHeader(info, level_sizes(path, src, chosen[0]), pixelsize.from_dataset(src))


__all__ = ["InputHeader", "inspect_input", "locate", "open_input", "slide_vendor"]
