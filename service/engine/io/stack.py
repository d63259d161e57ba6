"""Several single-band rasters (a STAC item's assets, :mod:`.stac`) read as one input on ONE grid.

The grid is the finest of the assets'. An asset at a coarser pixel size (Sentinel-2's 20 m bands beside its
10 m ones) is interpolated bilinearly onto it between pixel centres, by the same
:class:`~tileseg.engine.io.resample.ResampledRaster` that reads any finer virtual grid, so its values depend on
their grid position alone, never on the window read. The assets must cover the same extent in the same CRS.
The bands are scaled together as one file's would be: uint8 by 255, other dtypes by each band's 2nd and 98th
percentiles, each from its own asset.
"""

from __future__ import annotations

import threading

import numpy as np
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from tileseg.engine.errors import BandMismatchError, DtypeError, InputError, TooLargeError, UnreadableInputError
from tileseg.engine.io import pixelsize
from tileseg.engine.io.bands import percentiles, stretch_scaling, uint8_scaling
from tileseg.engine.io.read import ALLOWED_DRIVERS, RasterInfo, ThreadDatasets, mirrored_window, open_raster, probe
from tileseg.engine.io.remote import RemoteUrl
from tileseg.engine.io.resample import ResampledRaster
from tileseg.engine.io.stac import StacAsset, StacSource, asset_location
from tileseg.models.spec import ModelSpec


class AssetBand:
    """One single-band asset read by window: band 1, one dataset handle per reader thread.

    Its members are what :class:`~tileseg.engine.io.resample.ResampledRaster` reads of a base level, so that
    a coarser asset is put on the stack's grid by the same code as any other resampled read.
    """

    scaling = None  # the stack scales its bands together

    def __init__(self, asset: StacAsset, allowed_drivers=ALLOWED_DRIVERS, max_pixels: int | None = None):
        self.asset, self.location = asset, asset_location(asset)
        self.info = probe(self.location, allowed_drivers, max_pixels)
        self.drivers = (self.info.driver,)
        self._datasets = ThreadDatasets(lambda: open_raster(self.location, drivers=self.drivers))
        src = self.dataset()
        if src.count != 1:
            raise BandMismatchError(
                f"asset {asset.key} has {src.count} bands: band names stack single-band assets; "
                f"read it alone with --asset {asset.key} (and --bands 1,2,3 to choose among its bands)"
            )
        self.height, self.width, self.dtype = src.height, src.width, src.dtypes[0]
        self.crs, self.transform, self.bounds = src.crs, src.transform, src.bounds
        self.has_mask = MaskFlags.all_valid not in src.mask_flag_enums[0]
        self.pixel_size = pixelsize.from_dataset(src)
        self.levels = [(self.height, self.width)]

    def dataset(self):
        return self._datasets.get()

    def close(self) -> None:
        self._datasets.close()

    def read_region(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        return self._read(lambda src: src.read((1,), window=Window(col, row, width, height)))

    def read_valid(self, row: int, col: int, height: int, width: int) -> np.ndarray | None:
        if not self.has_mask:
            return None
        mask = self._read(lambda src: src.read_masks(1, window=Window(col, row, width, height)))
        return mask > 0

    def _read(self, fn):
        try:
            return fn(self.dataset())
        except RasterioError as err:
            where = self.location.masked if isinstance(self.location, RemoteUrl) else self.info.name
            raise UnreadableInputError(f"asset {self.asset.key} ({where}) could not be read: {err}") from err


class StackedRaster:
    """Single-band assets of a STAC item stacked into one input on the finest of their grids: a
    :class:`~tileseg.engine.io.source.RasterSource`. Coarser assets are interpolated bilinearly onto that grid
    (see the module's docstring); a pixel is valid where any band is (as GDAL's dataset mask of a multi-band
    file with nodata).

    Args:
        source: the item and the common names of the bands, in order.
        spec: the model's spec (band count, dtypes, normalisation).
        allowed_drivers, max_pixels: what to accept (the pixel limit applies to the stack's grid).
        scale: compute the scaling (a decimated read of every band); False for a check from headers only.

    Raises:
        BandMismatchError, DtypeError, InputError (assets that do not share an extent), TooLargeError,
        UnreadableInputError, UnsupportedFormatError.
    """

    def __init__(
        self,
        source: StacSource,
        spec: ModelSpec,
        allowed_drivers=ALLOWED_DRIVERS,
        max_pixels: int | None = None,
        scale: bool = True,
    ):
        self.source, self.pixels_read = source, 0
        assets = source.assets()
        if len(assets) != spec.input.bands:
            raise BandMismatchError(
                f"model {spec.name} takes {spec.input.bands} band(s); --bands names {len(assets)} "
                f"({', '.join(source.names or ())})"
            )
        self.bands: list[AssetBand] = []
        try:
            for asset in assets:
                self.bands.append(AssetBand(asset, allowed_drivers))
            self._check_grid(max_pixels)
            self._check_dtype(spec)
            self.scaling = self._scaling(spec) if scale else None
        except BaseException:
            self.close()
            raise
        finest = self.finest
        self.readers = [b if (b.height, b.width) == self.shape else ResampledRaster(b, *self.shape) for b in self.bands]
        self.crs, self.transform, self.pixel_size = finest.crs, finest.transform, finest.pixel_size
        self.has_mask = any(b.has_mask for b in self.bands)
        self.levels = [self.shape]
        self.info = RasterInfo(
            name=source.name,
            width=self.width,
            height=self.height,
            bands=len(self.bands),
            dtype=self.dtype,
            crs=finest.crs.to_string() if finest.crs else None,
            driver=finest.info.driver,
        )
        self._lock = threading.Lock()

    @property
    def finest(self) -> AssetBand:
        return max(self.bands, key=lambda b: b.height * b.width)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _check_grid(self, max_pixels: int | None) -> None:
        finest = self.finest
        self.height, self.width = finest.height, finest.width
        half = max(abs(finest.transform.a), abs(finest.transform.e)) / 2
        for band in self.bands:
            if band.crs != finest.crs or any(abs(a - b) > half for a, b in zip(band.bounds, finest.bounds)):
                raise InputError(
                    f"assets {band.asset.key} and {finest.asset.key} do not cover the same extent in the same CRS: "
                    "band names stack assets of one grid (at any pixel size)"
                )
        if max_pixels is not None and self.height * self.width > max_pixels:
            raise TooLargeError(
                f"{self.source.name} is {self.width}x{self.height} = {self.width * self.height} pixels; "
                f"the limit is {max_pixels}"
            )

    def _check_dtype(self, spec: ModelSpec) -> None:
        dtypes = {b.dtype for b in self.bands}
        if len(dtypes) > 1:
            raise DtypeError(f"the assets mix data types ({', '.join(sorted(dtypes))})")
        self.dtype = dtypes.pop()
        if self.dtype not in spec.input.dtypes:
            raise DtypeError(
                f"model {spec.name} does not take {self.dtype} input; it takes {', '.join(spec.input.dtypes)}"
            )

    def _scaling(self, spec: ModelSpec):
        if self.dtype == "uint8":
            return uint8_scaling(spec)
        # each band's 2nd and 98th percentiles from its own asset, as a multi-band file's are taken per band
        ranges = [percentiles(b.dataset(), (1,)) for b in self.bands]
        low = np.concatenate([r[0] for r in ranges])
        high = np.concatenate([r[1] for r in ranges])
        return stretch_scaling(spec, low, high, clip=True)

    def at_level(self, level: int) -> StackedRaster:
        raise UnreadableInputError(f"{self.info.name}: a stack of assets has one level, not {level + 1}")

    def close(self) -> None:
        for band in self.bands:
            band.close()

    def __enter__(self) -> StackedRaster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read_region(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """The ``(bands, height, width)`` values of an in-grid region: the assets' dtype when no band is
        resampled (uint8 is also kept through resampling), else float32."""
        with self._lock:
            self.pixels_read += height * width
        parts = [reader.read_region(row, col, height, width) for reader in self.readers]
        dtypes = {p.dtype for p in parts}
        if len(dtypes) > 1:
            parts = [p.astype(np.float32) for p in parts]
        return np.concatenate(parts, axis=0)

    def read_window(self, row: int, col: int, length: int) -> np.ndarray:
        """The raw ``(bands, length, length)`` window at ``(row, col)``, mirrored past the grid's edges: uint8
        as it is, any other dtype as float32 (as a file's reader gives it)."""
        data = mirrored_window(self.read_region, row, col, length, self.height, self.width)
        return data if data.dtype == np.uint8 else data.astype(np.float32)

    def read_valid(self, row: int, col: int, height: int, width: int) -> np.ndarray | None:
        """Valid where any band is valid; None when all of the region is."""
        if not self.has_mask:
            return None
        valid = np.zeros((height, width), bool)
        for reader in self.readers:
            part = reader.read_valid(row, col, height, width)
            if part is None:
                return None
            valid |= part
        return None if valid.all() else valid


__all__ = ["AssetBand", "StackedRaster"]
