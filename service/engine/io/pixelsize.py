"""Pixel sizes: how large one input pixel is on the ground or on the glass, and where that was read from.

A network sees the world at the pixel size it was trained at. The input's pixel size is read from what its
file says, in this order of trust:

* a projected CRS: the transform's pixel size in the CRS's linear unit, converted to metres;
* a geographic CRS: degrees, converted to metres at the scene's centre on the WGS 84 ellipsoid (the mean
  of the east-west and north-south sizes there);
* OME-XML ``PhysicalSizeX/Y`` in the TIFF's image description;
* TIFF resolution tags (pixels per centimetre or inch), except 72 and 96 per inch, which writers put in as
  a screen default, not as a measurement;
* an Aperio SVS image description's ``MPP`` (what OpenSlide reads too: the same size for a slide read
  through GDAL, from object storage);
* a slide's ``openslide.mpp-x/y`` (Aperio, Hamamatsu, MIRAX, DICOM pixel spacing, ...; see :mod:`.slide`).

Sizes are kept in metres; :func:`describe` writes them in nm, µm or m for people.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from tileseg.models.spec import UNITS, parse_length

WGS84_A = 6378137.0  # semi-major axis, metres
WGS84_E2 = 6.69437999014e-3  # first eccentricity squared
SCREEN_DPI = (72.0, 96.0)  # resolution tags that say "unset" rather than a scan's pixel size


@dataclass(frozen=True)
class MeasuredSize:
    """An input's pixel size in metres (None when its file does not say) and where that came from."""

    metres: float | None
    source: str
    note: str | None = None  # why a size the file carries was not used, for the report

    def to_dict(self) -> dict[str, Any]:
        return {"metres": self.metres, "source": self.source, "note": self.note}


UNKNOWN = MeasuredSize(None, "none")


def describe(metres: float | None) -> str:
    """A pixel size for people: ``4 nm``, ``0.499 µm``, ``0.3 m``; ``unknown`` for None."""
    if metres is None:
        return "unknown"
    for unit, factor in (("nm", 1e-9), ("µm", 1e-6), ("mm", 1e-3)):
        if metres < factor * 1000:
            return f"{metres / factor:.4g} {unit}"
    return f"{metres:.4g} m"


def metres_per_degree(latitude: float) -> tuple[float, float]:
    """Metres per degree of longitude and of latitude at ``latitude`` on the WGS 84 ellipsoid."""
    phi = math.radians(latitude)
    w = 1 - WGS84_E2 * math.sin(phi) ** 2
    east = math.pi / 180 * WGS84_A * math.cos(phi) / math.sqrt(w)
    north = math.pi / 180 * WGS84_A * (1 - WGS84_E2) / w**1.5
    return east, north


def from_dataset(src) -> MeasuredSize:
    """The pixel size a GDAL dataset's metadata gives (CRS and transform, OME-XML, TIFF resolution tags)."""
    crs, t = src.crs, src.transform
    if crs is not None and crs.is_projected:
        factor = crs.linear_units_factor[1]
        return MeasuredSize((abs(t.a) + abs(t.e)) / 2 * factor, f"projected CRS {_crs_name(crs)}")
    if crs is not None and crs.is_geographic:
        centre = (t.c + t.a * src.width / 2 + t.b * src.height / 2, t.f + t.d * src.width / 2 + t.e * src.height / 2)
        east, north = metres_per_degree(max(-89.9, min(89.9, centre[1])))
        size = (abs(t.a) * east + abs(t.e) * north) / 2
        return MeasuredSize(size, f"geographic CRS {_crs_name(crs)} at latitude {centre[1]:.3f}")
    tags = src.tags()
    description = tags.get("TIFFTAG_IMAGEDESCRIPTION", "")
    described = from_ome_xml(description) or from_aperio(description)
    if described is not None:
        return described
    return from_resolution_tags(tags)


APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")


def from_aperio(description: str) -> MeasuredSize | None:
    """The pixel size of an Aperio SVS image description (``...|MPP = 0.4990|...``, micrometres per pixel),
    or None when it is none."""
    if not description.startswith("Aperio"):
        return None
    match = APERIO_MPP.search(description)
    try:
        mpp = float(match.group(1)) if match else 0.0
    except ValueError:
        mpp = 0.0
    return MeasuredSize(mpp * 1e-6, "Aperio image description MPP") if mpp > 0 else None


def _crs_name(crs) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else "(custom)"


def from_ome_xml(description: str) -> MeasuredSize | None:
    """The pixel size of an OME-XML image description's first image, or None when it has none."""
    if "PhysicalSizeX" not in description:
        return None
    try:
        root = ET.fromstring(description)
    except ET.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    sizes = []
    for axis in ("X", "Y"):
        value = pixels.attrib.get(f"PhysicalSize{axis}", pixels.attrib["PhysicalSizeX"])
        unit = pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm")
        if unit not in UNITS:
            return MeasuredSize(None, "OME-XML", note=f"OME PhysicalSize{axis}Unit {unit!r} is not a length unit")
        sizes.append(float(value) * UNITS[unit])
    return MeasuredSize(sum(sizes) / 2, "OME-XML PhysicalSizeX/Y")


def from_resolution_tags(tags: dict[str, str]) -> MeasuredSize:
    """The pixel size of TIFF resolution tags (as GDAL reports them), or an unknown size with the reason."""
    x, y, unit = tags.get("TIFFTAG_XRESOLUTION"), tags.get("TIFFTAG_YRESOLUTION"), tags.get("TIFFTAG_RESOLUTIONUNIT")
    if not x or not unit:
        return UNKNOWN
    per_unit = {"2": 0.0254, "3": 0.01}.get(unit.split()[0])  # 2: inch, 3: centimetre
    xres, yres = float(x), float(y or x)
    if per_unit is None or xres <= 0 or yres <= 0:
        return MeasuredSize(None, "none", note="the TIFF resolution tags have no unit of length")
    dpi = xres * 0.0254 / per_unit
    if any(abs(dpi - screen) < 1e-3 for screen in SCREEN_DPI):
        return MeasuredSize(
            None, "none", note=f"the TIFF says {dpi:.0f} dpi, a screen default, not a scan's pixel size"
        )
    return MeasuredSize((per_unit / xres + per_unit / yres) / 2, "TIFF resolution tags")


def from_slide_properties(properties: dict[str, str]) -> MeasuredSize:
    """The pixel size of an OpenSlide slide from ``openslide.mpp-x/y`` (micrometres per pixel)."""
    x, y = properties.get("openslide.mpp-x"), properties.get("openslide.mpp-y")
    try:
        values = [float(v) for v in (x, y or x) if v]
    except ValueError:
        return MeasuredSize(None, "none", note=f"the slide's openslide.mpp-x {x!r} is not a number")
    if not values or min(values) <= 0:
        return UNKNOWN
    return MeasuredSize(
        sum(values) / len(values) * 1e-6, f"slide property openslide.mpp-x ({properties.get('openslide.vendor')})"
    )


__all__ = [
    "MeasuredSize",
    "UNKNOWN",
    "describe",
    "from_dataset",
    "from_ome_xml",
    "from_resolution_tags",
    "from_slide_properties",
    "metres_per_degree",
    "parse_length",
]
