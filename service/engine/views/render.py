"""Web tiles of a mask and of its input, for a viewer in a browser.

A viewer asks for small square pictures (tiles, 256 px) of the image at one zoom level at a time; this
module answers one tile at a time, straight from the files on disk, reading only the window the tile
covers, decimated to the tile's resolution (served from GeoTIFF overviews where they exist). Two
pyramids, the two the field uses:

- **XYZ web-mercator tiles** (``z/x/y``, the OSM/Google scheme, morecantile's ``WebMercatorQuad``) for
  georeferenced rasters: each tile is a region of EPSG:3857, and the raster is reprojected into it
  (``WarpedVRT``; nearest neighbour for the mask, so class indices stay class indices).
- **Deep Zoom** (OpenSeadragon's pyramid) for pixel-space images (no CRS: PNG, JPEG, slides): level
  ``max_level = ceil(log2(max(width, height)))`` is the full resolution, each level below halves it; tiles
  are 256 px, the last column and row smaller.

The input is shown from a *view copy* (:func:`write_view`): its display bands as 8-bit (stretched 2–98 %
when wider), an alpha band for nodata, tiled, compressed and with overviews, on the input's own grid.
The mask is drawn in its colour table (the card's class colours); nodata and hidden classes are
transparent.
"""

from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import morecantile
import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from tileseg.engine.io import ALLOWED_DRIVERS, gdal_env, open_raster
from tileseg.engine.io.remote import parse_remote
from tileseg.errors import TilesegError

TILE = 256
MAX_XYZ_ZOOM = 24  # 2.4 mm at the equator: deeper than any raster this serves
MERCATOR = "EPSG:3857"
WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
VIEW_BLOCK = 1024  # rows of the view copy written at a time (memory: VIEW_BLOCK x width x 4 bytes)


class BadTileError(TilesegError, ValueError):
    """A tile address that is not one of the pyramid's scheme (a negative index, a level too deep)."""

    code = "bad_tile"


class TileNotFoundError(TilesegError, LookupError):
    """A valid tile address that does not touch the image."""

    code = "no_such_tile"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Pyramid:
    """The tile pyramid of a raster, as a viewer needs to know it.

    ``kind`` is ``xyz`` (web mercator, ``bounds`` in lon/lat: west, south, east, north) or ``deepzoom``
    (pixel space); ``min_zoom``..``max_zoom`` are the levels with tiles (Deep Zoom: ``max_zoom`` is the full
    resolution; XYZ: the zoom whose pixels are as fine as the raster's).
    """

    kind: str
    width: int
    height: int
    tile_size: int
    min_zoom: int
    max_zoom: int
    bounds: tuple[float, float, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "width": self.width,
            "height": self.height,
            "tile_size": self.tile_size,
            "min_zoom": self.min_zoom,
            "max_zoom": self.max_zoom,
            "bounds": list(self.bounds) if self.bounds else None,
        }


def is_georeferenced(src) -> bool:
    """Whether a raster has a CRS and a real transform (not GDAL's pixel-space identity)."""
    return src.crs is not None and src.transform != Affine.identity()


def pyramid(path: str | os.PathLike) -> Pyramid:
    """The pyramid that :func:`render_tile` serves for ``path``."""
    with gdal_env(), rasterio.open(path) as src:
        levels_below = max(0, math.ceil(math.log2(max(src.width, src.height) / TILE)))
        if not is_georeferenced(src):
            top = max(0, math.ceil(math.log2(max(src.width, src.height))))
            return Pyramid("deepzoom", src.width, src.height, TILE, 0, top)
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
        left, bottom, right, top_ = transform_bounds(src.crs, MERCATOR, *src.bounds, densify_pts=21)
        resolution = max((right - left) / src.width, (top_ - bottom) / src.height)
        finest = min(MAX_XYZ_ZOOM, WEB_MERCATOR.zoom_for_res(resolution, zoom_level_strategy="upper"))
        lat = 85.0511287798
        bounds = (max(west, -180.0), max(south, -lat), min(east, 180.0), min(north, lat))
        return Pyramid("xyz", src.width, src.height, TILE, max(0, finest - levels_below), finest, bounds)


def render_tile(path: str | os.PathLike, layer: str, z: int, x: int, y: int, hidden: Iterable[int] = ()) -> bytes:
    """One tile of ``path`` as a PNG (RGBA).

    Args:
        path: the mask (``layer="mask"``) or the view copy of the input (``layer="input"``).
        layer: ``mask`` (class colours from the colour table) or ``input`` (the view copy's bands).
        z, x, y: the tile, in the raster's pyramid (:func:`pyramid`).
        hidden: mask classes drawn transparent.

    Raises:
        BadTileError: ``z``, ``x`` or ``y`` is not a tile of the pyramid's scheme (negative, too deep).
        TileNotFoundError: a valid tile that does not touch the image.
    """
    with gdal_env(), rasterio.open(path) as src:
        georeferenced = is_georeferenced(src)
        overviews = src.overviews(1)
    if georeferenced:
        data, valid = _xyz_read(path, layer, z, x, y, overviews)
    else:
        data, valid = _deepzoom_read(path, layer, z, x, y)
    rgba = _colour_mask(path, data[0], valid, hidden) if layer == "mask" else _rgba(data, valid)
    out = io.BytesIO()
    Image.fromarray(rgba).save(out, format="PNG", compress_level=1)  # fast: tiles are made on demand
    return out.getvalue()


def deepzoom_window(width: int, height: int, z: int, x: int, y: int) -> tuple[Window, tuple[int, int]]:
    """The full-resolution window of Deep Zoom tile ``z/x/y`` of a ``width`` x ``height`` image, and the
    tile's shape (rows, columns) at its level.

    Raises:
        BadTileError: a level outside ``0..ceil(log2(max side))`` or a negative index.
        TileNotFoundError: a tile past the level's last column or row.
    """
    top = max(0, math.ceil(math.log2(max(width, height))))
    if not 0 <= z <= top or x < 0 or y < 0:
        raise BadTileError(f"no Deep Zoom tile {z}/{x}/{y}: levels are 0..{top}, and x and y are not negative")
    scale = 2 ** (top - z)
    level_w, level_h = math.ceil(width / scale), math.ceil(height / scale)
    if x * TILE >= level_w or y * TILE >= level_h:
        raise TileNotFoundError(f"tile {z}/{x}/{y} is outside the image ({level_w}x{level_h} px at level {z})")
    shape = (min(TILE, level_h - y * TILE), min(TILE, level_w - x * TILE))
    col, row = x * TILE * scale, y * TILE * scale
    window = Window(col, row, min(TILE * scale, width - col), min(TILE * scale, height - row))
    return window, shape


def xyz_transform(z: int, x: int, y: int) -> Affine:
    """The EPSG:3857 transform of XYZ tile ``z/x/y`` (256 x 256 px).

    Raises:
        BadTileError: not a tile of the scheme (z outside 0..24, x or y outside 0..2^z - 1).
    """
    if not 0 <= z <= MAX_XYZ_ZOOM or not (0 <= x < 2**z and 0 <= y < 2**z):
        raise BadTileError(f"no XYZ tile {z}/{x}/{y}: z is 0..{MAX_XYZ_ZOOM}, and x and y are 0..2^z - 1")
    b = WEB_MERCATOR.xy_bounds(morecantile.Tile(x, y, z))
    return rasterio.transform.from_bounds(b.left, b.bottom, b.right, b.top, TILE, TILE)


def _deepzoom_read(path, layer: str, z: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    with gdal_env(), rasterio.open(path) as src:
        window, shape = deepzoom_window(src.width, src.height, z, x, y)
        resampling = Resampling.nearest if layer == "mask" else Resampling.average
        if layer == "mask":
            data = src.read(1, window=window, out_shape=shape, resampling=resampling)[None]
            valid = np.ones(shape, dtype=bool)
        else:
            bands = src.read(window=window, out_shape=(src.count, *shape), resampling=resampling)
            data, valid = bands[:-1], bands[-1] > 0  # the view copy's last band is alpha
    return data, valid


def _xyz_read(path, layer: str, z: int, x: int, y: int, overviews: list[int]) -> tuple[np.ndarray, np.ndarray]:
    transform = xyz_transform(z, x, y)
    with gdal_env(), rasterio.open(path) as src:
        left, bottom, right, top = transform_bounds(src.crs, MERCATOR, *src.bounds, densify_pts=21)
        tile_left, tile_top = transform.c, transform.f
        tile_right, tile_bottom = tile_left + TILE * transform.a, tile_top + TILE * transform.e
        if tile_left >= right or tile_right <= left or tile_bottom >= top or tile_top <= bottom:
            raise TileNotFoundError(f"tile {z}/{x}/{y} does not touch the image")
        # read from the coarsest overview still finer than the tile, so a zoomed-out tile reads few pixels
        factor = transform.a / ((right - left) / src.width)
        level = max((i for i, f in enumerate(overviews) if f <= factor), default=None)
    options = {} if level is None else {"overview_level": level}
    with gdal_env(), rasterio.open(path, **options) as src:
        if layer == "mask":
            fill = src.nodata if src.nodata is not None else np.iinfo(src.dtypes[0]).max
            with WarpedVRT(
                src, crs=MERCATOR, transform=transform, width=TILE, height=TILE,
                resampling=Resampling.nearest, src_nodata=fill, nodata=fill,
            ) as vrt:  # fmt: skip
                data = vrt.read(1)[None]
            return data, np.ones(data.shape[1:], dtype=bool)
        with WarpedVRT(
            src, crs=MERCATOR, transform=transform, width=TILE, height=TILE, resampling=Resampling.bilinear
        ) as vrt:
            bands = vrt.read()
    return bands[:-1], bands[-1] > 0  # warped with the view copy's alpha: 0 outside the image


def _colour_mask(path, classes: np.ndarray, valid: np.ndarray, hidden: Iterable[int]) -> np.ndarray:
    """Classes to RGBA through the mask's colour table; nodata, hidden classes and unknown indices clear."""
    with gdal_env(), rasterio.open(path) as src:
        nodata = src.nodata
        try:
            table = src.colormap(1)
        except ValueError:  # no colour table: a grey ramp
            table = {}
    size = int(np.iinfo(classes.dtype).max) + 1 if classes.dtype.kind == "u" and classes.itemsize <= 2 else 65536
    palette = np.zeros((size, 4), dtype=np.uint8)
    for index, colour in table.items():
        palette[index] = colour
    if not table:
        top = max(1, int(classes.max(initial=0)))
        for index in range(top + 1):
            palette[index] = (*(3 * [int(255 * index / top)]), 255)
    for index in hidden:
        if 0 <= index < size:
            palette[index, 3] = 0
    if nodata is not None:
        palette[int(nodata), 3] = 0
    rgba = palette[classes]
    rgba[~valid, 3] = 0
    return rgba


def _rgba(bands: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Display bands (1 grey or 3 RGB, uint8) and validity to an RGBA picture."""
    rgb = np.repeat(bands[:1], 3, axis=0) if bands.shape[0] < 3 else bands[:3]
    alpha = np.where(valid, 255, 0).astype(np.uint8)[None]
    return np.ascontiguousarray(np.concatenate([rgb, alpha]).transpose(1, 2, 0))


# ---- the view copy of an input --------------------------------------------------------------------------------


def display_bands(src, bands: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The 1-based bands to show: the first three of ``bands`` (the job's own selection) or of the non-alpha
    bands when there are three or more, else the first one (grey)."""
    if bands:
        chosen = tuple(bands)
    else:
        chosen = tuple(i + 1 for i, ci in enumerate(src.colorinterp) if ci != ColorInterp.alpha) or (1,)
    return chosen[:3] if len(chosen) >= 3 else chosen[:1]


def write_view(source: str | os.PathLike, output: str | os.PathLike, bands: tuple[int, ...] | None = None) -> Path:
    """Write the view copy of ``source``: its display bands (:func:`display_bands`) as uint8 (data wider than
    8 bits stretched from its 2nd to 98th percentile), and an alpha band (0 where the source is nodata),
    on the source's grid, tiled, compressed, with overviews. Read and written in strips of rows, so memory
    follows the width, not the image. The file appears only when complete.
    """
    output = Path(output)
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.tmp")
    # the job's input (an upload, a remote raster) is opened as the engine opens it: by the accepted drivers only
    where = source if isinstance(source, os.PathLike) else parse_remote(source) or Path(source)
    try:
        with gdal_env(), open_raster(where, drivers=ALLOWED_DRIVERS) as src:
            chosen = display_bands(src, bands)
            low, high = _stretch(src, chosen)
            profile = _view_profile(src, len(chosen))
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.colorinterp = _view_colorinterp(len(chosen))
                for row in range(0, src.height, VIEW_BLOCK):
                    window = Window(0, row, src.width, min(VIEW_BLOCK, src.height - row))
                    data = src.read(chosen, window=window).astype(np.float32)
                    scaled = np.clip((data - low[:, None, None]) * (255.0 / (high - low))[:, None, None], 0, 255)
                    alpha = src.dataset_mask(window=window)
                    dst.write(np.concatenate([np.nan_to_num(scaled).astype(np.uint8), alpha[None]]), window=window)
            _build_overviews(tmp, Resampling.average)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def add_overviews(mask: str | os.PathLike) -> None:
    """Give a mask GeoTIFF internal overviews (nearest: class indices stay class indices), unless it has
    some (a COG), so that zoomed-out tiles read few pixels."""
    with gdal_env(), rasterio.open(mask) as src:
        if src.overviews(1):
            return
    _build_overviews(Path(mask), Resampling.nearest)


def _build_overviews(path: Path, resampling: Resampling) -> None:
    with gdal_env(), rasterio.open(path, "r+") as dst:
        factors: list[int] = []
        side = max(dst.width, dst.height)
        while side / (2 ** (len(factors) + 1)) >= TILE / 2:
            factors.append(2 ** (len(factors) + 1))
        if factors:
            dst.build_overviews(factors, resampling)


def _stretch(src, bands: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per band, the values shown as 0 and 255: the dtype's range for 8-bit data, else the 2nd and 98th
    percentiles of a decimated read."""
    if all(src.dtypes[b - 1] == "uint8" for b in bands):
        return np.zeros(len(bands), np.float32), np.full(len(bands), 255.0, np.float32)
    scale = max(1.0, max(src.width, src.height) / 1024)
    shape = (len(bands), max(1, round(src.height / scale)), max(1, round(src.width / scale)))
    sample = src.read(bands, out_shape=shape, masked=True, resampling=Resampling.nearest)
    low, high = np.zeros(len(bands), np.float32), np.ones(len(bands), np.float32)
    for i, band in enumerate(sample):
        values = band.compressed()
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if values.size:
            low[i], high[i] = np.percentile(values, [2, 98])
            high[i] = max(high[i], low[i] + 1e-6)
    return low, high


def _view_profile(src, count: int) -> dict[str, Any]:
    profile = {
        "driver": "GTiff",
        "width": src.width,
        "height": src.height,
        "count": count + 1,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "compress": "deflate",
        "predictor": 2,
        "bigtiff": "if_safer",
    }
    if is_georeferenced(src):
        profile.update(crs=src.crs, transform=src.transform)
    return profile


def _view_colorinterp(count: int) -> list[ColorInterp]:
    colours = [ColorInterp.red, ColorInterp.green, ColorInterp.blue] if count == 3 else [ColorInterp.gray]
    return [*colours, ColorInterp.alpha]


__all__ = [
    "BadTileError",
    "Pyramid",
    "TileNotFoundError",
    "add_overviews",
    "deepzoom_window",
    "display_bands",
    "is_georeferenced",
    "pyramid",
    "render_tile",
    "write_view",
    "xyz_transform",
]
