"""Raster input and output with rasterio: windows in (:mod:`.read`, or :mod:`.array` for an image already in
memory), finished rows out (:mod:`.write`)."""

from tileseg.engine.io.array import ArrayRaster
from tileseg.engine.io.read import (
    ALLOWED_DRIVERS,
    InputRaster,
    RasterInfo,
    Scaling,
    check_dtype,
    gdal_env,
    open_raster,
    probe,
    select_bands,
)
from tileseg.engine.io.write import MaskSink, StripWriter, mask_profile, write_class_metadata

__all__ = [
    "ALLOWED_DRIVERS",
    "ArrayRaster",
    "InputRaster",
    "MaskSink",
    "RasterInfo",
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
