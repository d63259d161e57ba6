"""Where a Zarr lives: a local folder, an ``s3://`` prefix or an ``https://`` URL, opened as a zarr-python store.

A Zarr is a folder of objects (metadata documents and chunks), not one file: GDAL's range reads do not apply.
Local folders are zarr's ``LocalStore``; remote ones go through zarr's own ``ObjectStore`` over ``obstore``,
which reads by GET (and byte ranges) with the engine's retry policy and time-outs, behind a bounded cache of
the objects read. ``s3://`` takes the endpoint,
region and credentials from the variables boto3 reads (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` for MinIO,
Ceph or moto, path-style), as the rest of the product does.

A source is a Zarr when a segment of its path ends in ``.zarr`` (``scene.ome.zarr``, ``data.zarr/array``) or,
for a local folder, when it holds Zarr metadata (``zarr.json``, ``.zgroup``, ``.zarray``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from tileseg.config import engine_config
from tileseg.engine.errors import UnreadableInputError
from tileseg.engine.io.remote import RemoteUrl

ZARR_DRIVER = "Zarr"  # the name a Zarr input is reported under (OME-Zarr images: "OME-Zarr")
METADATA = ("zarr.json", ".zgroup", ".zarray")
CONNECT_TIMEOUT = "10s"
READ_TIMEOUT = "60s"


def is_zarr(source: Path | RemoteUrl | str) -> bool:
    """Whether ``source`` names a Zarr (see the module's docstring)."""
    if isinstance(source, RemoteUrl):
        parts: tuple[str, ...] = PurePosixPath(urlsplit(source.url).path).parts
    else:
        path = Path(source)
        if path.is_dir() and any((path / name).is_file() for name in METADATA):
            return True
        parts = path.parts
    return any(part.lower().endswith(".zarr") for part in parts)


def open_store(location: Path | RemoteUrl, read_only: bool = True):
    """A zarr-python store over ``location`` (read-only unless asked).

    Raises:
        UnreadableInputError: a local path that is no folder; a remote URL of another scheme.
    """
    from zarr.storage import LocalStore, ObjectStore

    if isinstance(location, Path):
        if read_only and not location.is_dir():
            raise UnreadableInputError(f"{location}: no such Zarr folder")
        return LocalStore(location, read_only=read_only)
    store = ObjectStore(_object_store(location), read_only=read_only)
    return _cached(store) if read_only else store


def _cached(store):
    """``store`` behind an in-memory LRU cache of its objects (``TILESEG_GDAL_CACHE_MB``, as GDAL's block cache):
    neighbouring tiles' windows overlap by their halo and share chunks, and without it each window fetched its
    chunks again (a 1024² image in 256² chunks: 199 requests, 12x its stored bytes, measured over http)."""
    try:
        from zarr.experimental.cache_store import CacheStore
        from zarr.storage import MemoryStore
    except ImportError:  # zarr without it: correct, only slower
        return store
    size = engine_config().gdal_cache_mb * 2**20
    return CacheStore(store, cache_store=MemoryStore(), max_size=size, cache_set_data=False)


def _object_store(url: RemoteUrl):
    """The obstore store of an ``s3://`` prefix or an http(s) URL, with the retry policy and time-outs."""
    from obstore.store import HTTPStore, S3Store

    config = engine_config()
    # obstore's options are TypedDicts; built as plain dicts here
    retry: Any = {
        "max_retries": config.http_max_retry,
        "retry_timeout": timedelta(seconds=max(1.0, config.http_retry_delay * 64)),
    }
    client: Any = {"connect_timeout": CONNECT_TIMEOUT, "timeout": READ_TIMEOUT}
    parts = urlsplit(url.url)
    if url.scheme != "s3":
        client["allow_http"] = parts.scheme == "http"
        return HTTPStore.from_url(url.url.rstrip("/"), client_options=client, retry_config=retry)
    s3_config: Any
    s3_config, client["allow_http"] = s3_settings()
    prefix = parts.path.strip("/")
    return S3Store(parts.netloc, prefix=prefix, config=s3_config, client_options=client, retry_config=retry)


def s3_settings(environ=os.environ) -> tuple[dict[str, Any], bool]:
    """obstore's S3 settings from the variables boto3 reads, and whether the endpoint is plain http."""
    config: dict[str, Any] = {}
    for key, name in (
        ("AWS_ACCESS_KEY_ID", "access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
        ("AWS_SESSION_TOKEN", "session_token"),
    ):
        if environ.get(key):
            config[name] = environ[key]
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        config["region"] = region
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return config, False
    endpoint = endpoint if "://" in endpoint else f"https://{endpoint}"
    # an endpoint of its own takes the bucket in the path: MinIO and moto have no wildcard DNS for bucket.host
    config.update(endpoint=endpoint.rstrip("/"), virtual_hosted_style_request=False)
    return config, endpoint.startswith("http://")


__all__ = ["METADATA", "ZARR_DRIVER", "is_zarr", "open_store", "s3_settings"]
