"""GDAL's options for remote reads, set once for the whole process: every reader thread, every mode.

Why not ``rasterio.Env`` or ``rasterio.env.set_gdal_config``: both set an option for the *calling thread* only
once that thread has entered an environment (rasterio keeps the options of an active ``Env`` thread-local), and
the engine opens its datasets in reader threads that entered none. A service's worker thread, which reads inside
:func:`~tileseg.engine.io.read.gdal_env`, therefore set the S3 endpoint for itself and its reader threads went
to ``bucket.s3.us-east-1.amazonaws.com``. GDAL's own ``CPLSetConfigOption`` is process-wide whatever the caller
has entered, so it is called here, from the libgdal that rasterio loaded.

:func:`apply` is called from ``gdal_env`` and ``open_raster``: every path that opens a raster, remote or not (the
command line, the embedded service, queue workers, shards, OGC execution, the viewer), goes through it, and it
costs a dictionary comparison when nothing changed.

:func:`set_path_option` sets an option for the paths under a prefix only (GDAL's ``VSISetPathSpecificOption``):
how a source's checked address is pinned (:mod:`.pinning`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import logging
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

from tileseg.config import engine_config
from tileseg.urls import mask_text

# Transient answers that GDAL retries, with a growing delay, on every thread: throttling and the 5xx of a
# store or proxy under load. The delay doubles from TILESEG_HTTP_RETRY_DELAY at each attempt.
RETRY_CODES = "429,500,502,503,504"


def gdal_options(environ: os._Environ[str] | dict[str, str] = os.environ) -> dict[str, str]:
    """The GDAL options for remote reads: retries, time-outs, no directory listing on open, reads of what
    is needed only, and the S3 endpoint of ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (MinIO, Ceph, moto)
    in GDAL's own terms.

    The credential variables are not copied: GDAL reads them from the environment as boto3 does.
    """
    config = engine_config()
    options = {
        "GDAL_HTTP_MAX_RETRY": str(config.http_max_retry),
        "GDAL_HTTP_RETRY_DELAY": str(config.http_retry_delay),
        "GDAL_HTTP_RETRY_CODES": RETRY_CODES,
        "GDAL_HTTP_CONNECTTIMEOUT": str(max(1, round(config.http_connect_timeout))),
        # a source that sends headers then nothing: under 1 byte/s for this long fails the request (then the
        # retries); GDAL_HTTP_TIMEOUT would also cap a slow but live transfer, so it is left unset
        "GDAL_HTTP_LOW_SPEED_TIME": str(max(1, round(config.http_read_timeout))),
        "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
        # without it, opening s3://bucket/a.tif lists the whole "folder" first: one more request, and a slow
        # one in a bucket of many keys
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        # what a read needs, not more: GDAL's default fetches 16 KiB at open and then reads ahead (doubling
        # chunks on sequential blocks, up to 100 MB), which read a 2048^2 COG 1.7 times for a 250^2 ROI
        "GDAL_INGESTED_BYTES_AT_OPEN": str(config.http_header_bytes),
        "CPL_VSIL_CURL_CHUNK_SIZE": str(config.http_chunk_bytes),
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    }
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        options["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        # an endpoint of its own takes the bucket in the path (http://host:9000/bucket/key): MinIO and moto
        # have no wildcard DNS for bucket.host
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        options["AWS_REGION"] = region
    return options


@functools.cache
def libgdal() -> ctypes.CDLL:
    """The libgdal that rasterio loaded (the same handle: options set here are the ones its reads see)."""
    import rasterio._env  # loads libgdal

    loaded = _loaded_libgdal()
    candidates = [loaded] if loaded else []
    candidates += glob.glob(str(Path(rasterio._env.__file__).parent.parent / "rasterio.libs" / "libgdal*"))
    candidates += [ctypes.util.find_library("gdal") or ""]
    for path in candidates:
        if path:
            lib = ctypes.CDLL(path)
            lib.CPLSetConfigOption.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            if hasattr(lib, "VSISetPathSpecificOption"):  # GDAL 3.6 and later
                lib.VSISetPathSpecificOption.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
            return lib
    raise RuntimeError("libgdal was not found beside rasterio")


def _loaded_libgdal() -> str | None:
    """rasterio's libgdal among those mapped into the process: another package's wheel may bring a GDAL of its
    own (pyogrio's, fiona's), and options set in that copy never reach rasterio's reads."""
    import rasterio

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if "libgdal" in line}
    paths = {p for p in paths if os.path.basename(p).startswith("libgdal")}
    own = Path(rasterio.__file__).resolve().parent.parent
    beside = [p for p in paths if Path(p).resolve().parent == own / "rasterio.libs"]
    others = [p for p in paths if ".libs" not in Path(p).parent.name]  # a system GDAL rasterio was built on
    found = beside or others
    return found[0] if found else None


def set_option(key: str, value: str | None) -> None:
    """Set (None: unset) GDAL's configuration option ``key`` for the whole process."""
    libgdal().CPLSetConfigOption(key.encode(), None if value is None else value.encode())


def set_path_option(prefix: str, key: str, value: str) -> None:
    """Set GDAL's option ``key`` for the paths that start with ``prefix`` (``/vsicurl/http://host:port/``)."""
    libgdal().VSISetPathSpecificOption(prefix.encode(), key.encode(), value.encode())


class MaskUrls(logging.Filter):
    """Masks the URLs in a log record: GDAL's warnings (a retried 503, say) name the URL it read, with its
    query string, and rasterio logs them as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = None
        return True


# the loggers that carry GDAL's messages (a filter acts on the records of its own logger only)
GDAL_LOGGERS = ("rasterio", "rasterio._err", "rasterio._env", "rasterio._base", "rasterio._io", "rasterio.env")
_lock = threading.Lock()
_applied: dict[str, str] = {}


def apply() -> None:
    """Set :func:`gdal_options` for the whole process (every thread), from the configuration and the
    environment now; options no longer wanted (an endpoint unset) are unset. Also masks the URLs in GDAL's
    log messages from then on."""
    options = gdal_options()
    with _lock:
        if options == _applied:
            return
        for key in set(_applied) - set(options):
            set_option(key, None)
        for key, value in options.items():
            set_option(key, value)
        _applied.clear()
        _applied.update(options)
        for name in GDAL_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, MaskUrls) for f in logger.filters):
                logger.addFilter(MaskUrls())


__all__ = ["RETRY_CODES", "MaskUrls", "apply", "gdal_options", "set_option", "set_path_option"]
