"""Raster input and output with rasterio: every reader implements the :class:`RasterSource` contract
(:mod:`.source`): files (:mod:`.read`, local or by range requests, :mod:`.remote`), slides (:mod:`.slide`),
images already in memory (:mod:`.array`), resampled grids (:mod:`.resample`), STAC items' assets stacked into
one input (:mod:`.stac`, :mod:`.stack`), Zarr arrays and OME-Zarr images (:mod:`.zarr_raster`, :mod:`.ngff`);
finished rows out (:mod:`.write`). Nothing here imports the engine above."""

from tileseg.engine.io.array import ArrayRaster
from tileseg.engine.io.bands import Scaling, check_dtype, select_bands
from tileseg.engine.io.read import ALLOWED_DRIVERS, InputRaster, RasterInfo, gdal_env, open_raster, probe
from tileseg.engine.io.source import RasterSource
from tileseg.engine.io.write import StripWriter, mask_profile, write_class_metadata

__all__ = [
    "ALLOWED_DRIVERS",
    "ArrayRaster",
    "InputRaster",
    "RasterInfo",
    "RasterSource",
    "Scaling",
    "StripWriter",
    "check_dtype",
    "gdal_env",
    "mask_profile",
    "open_raster",
    "probe",
    "select_bands",
    "write_class_metadata",
]
