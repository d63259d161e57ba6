"""tileseg's service: the overlap-tile engine, raster IO, the command line and (later) the HTTP API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tileseg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
