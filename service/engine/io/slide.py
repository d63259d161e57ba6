"""Whole-slide images through OpenSlide, read by window like any other input.

OpenSlide reads the vendors' pyramids (Aperio SVS, Hamamatsu NDPI/VMS, MIRAX MRXS with its folder beside
the ``.mrxs`` file, Leica SCN, Philips TIFF, Ventana BIF, Sakura, DICOM WSI, generic tiled TIFF) and gives
RGBA regions of any level, addressed in level-0 coordinates. :class:`SlideRaster` serves them through the
engine's window interface (:class:`tileseg.engine.io.read.InputRaster`'s members), at one level.

Which reader owns a file is decided by its content (:func:`slide_format`): GDAL stays the reader of anything
with a CRS, of non-TIFF formats and of plain (generic) TIFFs, whose overviews GDAL reads; OpenSlide takes
what it recognises as a vendor's slide. GDAL opens an SVS too, but calls its thumbnail, label and macro
images "overviews", so a slide's levels must come from OpenSlide.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from tileseg.engine.errors import BandMismatchError, DtypeError, TooLargeError, UnreadableInputError
from tileseg.engine.io import pixelsize
from tileseg.engine.io.bands import uint8_scaling
from tileseg.engine.io.read import RasterInfo, mirrored_window
from tileseg.models.spec import ModelSpec

# OpenSlide's names of the formats it owns here ("generic-tiff" is left to GDAL, which reads its overviews)
SLIDE_VENDORS = frozenset(
    {"aperio", "dicom", "hamamatsu", "leica", "mirax", "philips", "sakura", "synthetic", "trestle", "ventana"}
)
SLIDE_DRIVER = "OpenSlide"  # the name under which slides are listed among the allowed input formats


def slide_format(path: str | Path) -> str | None:
    """OpenSlide's vendor name for a whole-slide image it owns, or None (then GDAL reads the file)."""
    try:
        import openslide
    except ImportError:  # the slide extra is not installed: GDAL reads what it can
        return None
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        return None
    return vendor if vendor in SLIDE_VENDORS else None


def open_slide(path: Path):
    """An OpenSlide handle, its failures turned into :class:`UnreadableInputError`."""
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as err:
        raise UnreadableInputError(f"{path.name} is not a slide OpenSlide can open: {err}") from err


class SlideRaster:
    """A whole-slide image at one pyramid level, read by window (RGB, uint8).

    Args:
        path: the slide (for MIRAX, the ``.mrxs`` file with its folder beside it).
        spec: the model's spec: it must take 3 bands of uint8 (or ``bands`` picks them from R, G, B).
        bands: 1-based bands among R, G, B, or None for all three.
        level: the pyramid level to read (0 the full resolution).
        max_pixels: the largest level-0 size accepted.

    Raises:
        UnreadableInputError: OpenSlide cannot open the slide, or cannot decode it.
        BandMismatchError, DtypeError: the model does not take RGB uint8.
        TooLargeError: more than ``max_pixels``.
    """

    def __init__(self, path, spec: ModelSpec, bands=None, level: int = 0, max_pixels: int | None = None):
        self.path, self.spec, self.level = Path(path), spec, level
        if not self.path.is_file():
            raise UnreadableInputError(f"{self.path}: no such file")
        self.slide = open_slide(self.path)
        self.vendor = str(self.slide.properties.get("openslide.vendor", "slide"))
        self.levels = [(h, w) for w, h in self.slide.level_dimensions]
        if not 0 <= level < len(self.levels):
            raise UnreadableInputError(f"{self.path.name} has no pyramid level {level} (it has {len(self.levels)})")
        self.height, self.width = self.levels[level]
        self.downsample = self.slide.level_downsamples[level]
        full_h, full_w = self.levels[0]
        if max_pixels is not None and full_w * full_h > max_pixels:
            raise TooLargeError(f"{self.path.name} is {full_w}x{full_h} pixels; the limit is {max_pixels}")
        self.bands = _slide_bands(spec, bands)
        self.alpha, self.has_mask, self.pixels_read = None, False, 0
        self.scaling = uint8_scaling(spec)
        self.crs, self.transform = None, None
        self.info = RasterInfo(self.path.name, full_w, full_h, 3, "uint8", None, f"{SLIDE_DRIVER}:{self.vendor}")
        self.pixel_size = pixelsize.from_slide_properties(dict(self.slide.properties))
        self._lock = threading.Lock()
        self.read_region(self.height // 2, self.width // 2, 1, 1)  # a slide that opens but cannot decode fails now

    def at_level(self, level: int) -> SlideRaster:
        """The same slide read at pyramid ``level`` (a new reader; the caller closes it)."""
        return SlideRaster(self.path, self.spec, self.bands, level)

    def read_rgba(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """``(height, width, 4)`` RGBA of an in-level region (alpha 0 where the slide has no data).

        Raises:
            UnreadableInputError: OpenSlide cannot decode the region.
        """
        import openslide

        origin = (int(round(col * self.downsample)), int(round(row * self.downsample)))
        try:
            image = self.slide.read_region(origin, self.level, (width, height))
        except openslide.OpenSlideError as err:
            raise UnreadableInputError(f"{self.path.name} could not be read (corrupt slide?): {err}") from err
        with self._lock:
            self.pixels_read += height * width
        return np.asarray(image)

    def read_region(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """The ``(bands, height, width)`` uint8 values of an in-level region."""
        rgba = self.read_rgba(row, col, height, width)
        return np.ascontiguousarray(rgba[:, :, [b - 1 for b in self.bands]].transpose(2, 0, 1))

    def read_window(self, row: int, col: int, length: int) -> np.ndarray:
        """The ``(bands, length, length)`` uint8 window at ``(row, col)``, mirrored past the level's edges."""
        return mirrored_window(self.read_region, row, col, length, self.height, self.width)

    def read_valid(self, row: int, col: int, height: int, width: int) -> None:
        """None: a slide's pixels are all taken as valid (an empty area of glass is segmented as glass)."""
        return None

    def close(self) -> None:
        self.slide.close()

    def __enter__(self) -> SlideRaster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _slide_bands(spec: ModelSpec, bands) -> tuple[int, ...]:
    if "uint8" not in spec.input.dtypes:
        raise DtypeError(f"model {spec.name} does not take uint8 input, which is what a slide gives")
    chosen = tuple(bands) if bands else (1, 2, 3)
    if any(not 1 <= b <= 3 for b in chosen):
        raise BandMismatchError(f"a slide has bands 1..3 (R, G, B), not {list(chosen)}")
    if len(chosen) != spec.input.bands:
        raise BandMismatchError(
            f"model {spec.name} takes {spec.input.bands} band(s), a slide gives {len(chosen)} (R, G, B)"
            + ("; choose with --bands" if spec.input.bands < len(chosen) else "")
        )
    return chosen


__all__ = ["SLIDE_DRIVER", "SLIDE_VENDORS", "SlideRaster", "open_slide", "slide_format"]
