"""tileseg: segment arbitrarily large images tile by tile with trained networks, into seamless mask GeoTIFFs.

Packages, each depending only on those before it: ``tileseg.models`` (geometry, architectures, checkpoints)
<- ``tileseg.engine`` (tiling, raster IO, running, stitching) <- ``tileseg.training`` (validates through
the engine) and ``tileseg.jobs`` (the job table and workers) <- ``tileseg.api`` (HTTP) and ``tileseg.cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tileseg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
