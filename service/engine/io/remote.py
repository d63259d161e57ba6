"""Rasters in object storage and on web servers, read by range requests.

A user names a remote raster the way the rest of their tools do: ``s3://bucket/key`` or an ``https://`` (or
``http://``) URL. GDAL reads such a file through its virtual file systems, fetching only the byte ranges that
the blocks of a window need (a Cloud Optimized GeoTIFF's header, then its tiles): :class:`RemoteUrl` turns a
URL into the ``/vsis3/`` or ``/vsicurl/`` path GDAL opens, so that nobody writes a ``/vsi`` path by hand.

Credentials and endpoints come from the variables boto3 and the AWS CLI read (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, which
GDAL reads as they are, and ``AWS_ENDPOINT_URL``, which it does not: :func:`gdal_options` translates it).
:func:`configure_remote_reads` sets these, with the retry policy, as process-wide GDAL options: a
``rasterio.Env`` reaches only the thread that entered it, and the engine reads from several threads.

Messages name a URL only through :meth:`RemoteUrl.masked`: its user name, password and query string (where
presigned URLs carry their signature) never reach a log or an error.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from rasterio.env import set_gdal_config

from tileseg.config import engine_config
from tileseg.engine.errors import UnreadableInputError
from tileseg.urls import mask_text, mask_url

SCHEMES = ("s3", "https", "http")

# Transient answers that GDAL retries, with a growing delay, on every thread: throttling and the 5xx of a
# store or proxy under load. The delay doubles from TILESEG_HTTP_RETRY_DELAY at each attempt.
RETRY_CODES = "429,500,502,503,504"


@dataclass(frozen=True)
class RemoteUrl:
    """A raster named by an ``s3://``, ``https://`` or ``http://`` URL.

    Attributes:
        url: the URL as given (it may hold a presigned query string: never print it, print :attr:`masked`).
    """

    url: str

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()

    @property
    def gdal_path(self) -> str:
        """The path GDAL opens: ``/vsis3/bucket/key`` or ``/vsicurl/<url>``."""
        if self.scheme == "s3":
            parts = urlsplit(self.url)
            return f"/vsis3/{parts.netloc}{parts.path}"
        return f"/vsicurl/{self.url}"

    @property
    def masked(self) -> str:
        """The URL with its user information and query string replaced by ``***``, fit for messages."""
        return mask_url(self.url)

    @property
    def name(self) -> str:
        """The file's name: the last segment of the URL's path."""
        return urlsplit(self.url).path.rstrip("/").rsplit("/", 1)[-1] or self.masked

    def scrub(self, text: str) -> str:
        """``text`` (a GDAL message, say) with every spelling of this URL replaced by the masked one."""
        for secret in sorted({self.gdal_path, self.url}, key=len, reverse=True):
            text = text.replace(secret, self.masked)
        return mask_text(text)

    def __str__(self) -> str:
        return self.masked


def parse_remote(source) -> RemoteUrl | None:
    """The :class:`RemoteUrl` that ``source`` names, or None for a local path.

    Raises:
        UnreadableInputError: a URL of a scheme GDAL is not given here (``ftp:``, ``file:``), or without a
            bucket or host.
    """
    if not isinstance(source, str) or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        return None
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnreadableInputError(
            f"{mask_url(source)}: {scheme}:// is not a source this reads; give a local path, "
            f"{', '.join(s + '://' for s in SCHEMES)}"
        )
    if not parts.hostname or not parts.path.strip("/"):
        raise UnreadableInputError(f"{mask_url(source)}: a remote source needs a bucket or host and a key")
    return RemoteUrl(source)


def gdal_options(environ: os._Environ[str] | dict[str, str] = os.environ) -> dict[str, str]:
    """The GDAL options for remote reads: the retry policy, no directory listing on open, and the S3
    endpoint of ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (MinIO, Ceph, moto) in GDAL's own terms.

    The credential variables are not copied: GDAL reads them from the environment as boto3 does.
    """
    config = engine_config()
    options = {
        "GDAL_HTTP_MAX_RETRY": str(config.http_max_retry),
        "GDAL_HTTP_RETRY_DELAY": str(config.http_retry_delay),
        "GDAL_HTTP_RETRY_CODES": RETRY_CODES,
        # without it, opening s3://bucket/a.tif lists the whole "folder" first: one more request, and a slow
        # one in a bucket of many keys
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
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


class MaskUrls(logging.Filter):
    """Masks the URLs in a log record: GDAL's warnings (a retried 503, say) name the URL it read, with its
    query string, and rasterio logs them as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = None
        return True


# the loggers that carry GDAL's messages (a filter acts on the records of its own logger only)
GDAL_LOGGERS = ("rasterio", "rasterio._err", "rasterio._env", "rasterio._base", "rasterio._io", "rasterio.env")
_configured = threading.Lock()


def configure_remote_reads() -> None:
    """Set :func:`gdal_options` for the whole process (every reader thread), from the environment now.

    Called before a remote raster is opened; calling it again picks up a changed environment. Also masks
    the URLs in GDAL's log messages from then on.
    """
    with _configured:
        for key, value in gdal_options().items():
            set_gdal_config(key, value)
        for name in GDAL_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, MaskUrls) for f in logger.filters):
                logger.addFilter(MaskUrls())


MAX_HOPS = 5  # redirects followed, at most, by :func:`http_get`
HTTP_TIMEOUT_S = 30.0
RETRIED = frozenset(int(code) for code in RETRY_CODES.split(","))


def http_get(
    url: str,
    max_bytes: int,
    hop: Callable[[str], None] | None = None,
    byte_range: tuple[int, int] | None = None,
) -> tuple[str, bytes]:
    """GET ``url`` (a small document: a STAC item, or the first bytes of a raster) with the retry policy of the
    range reads, following redirects one hop at a time.

    GDAL's ``/vsicurl/`` follows every redirect itself (libcurl's FOLLOWLOCATION; GDAL 3.10 has no option to
    stop it), so a server checks a source with this first: ``hop`` is called with each redirect's target before
    it is requested, and refuses it by raising.

    Args:
        url: an http(s) URL.
        max_bytes: the most bytes taken; a longer answer is an error (with ``byte_range``, it is cut there: a
            server that ignores Range sends the whole file).
        hop: called with each redirect target (absolute) before it is requested; None follows any.
        byte_range: ``(first, last)`` bytes to ask for (a Range request), or None for the whole document.

    Returns:
        The URL that answered (after redirects) and its bytes.

    Raises:
        UnreadableInputError: an answer other than 200/206 after the retries, a body over ``max_bytes``, too many
            redirects, or no connection; messages name URLs masked.
        Whatever ``hop`` raises.
    """
    import httpx

    headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
    with httpx.Client(follow_redirects=False, timeout=HTTP_TIMEOUT_S, trust_env=False) as client:
        for _ in range(MAX_HOPS + 1):
            answer = _get_retried(client, url, headers, max_bytes, byte_range is not None)
            if isinstance(answer, str):  # a redirect's target
                target = urljoin(url, answer)
                if hop is not None:
                    hop(target)
                url = target
                continue
            return url, answer
    raise UnreadableInputError(f"{mask_url(url)}: more than {MAX_HOPS} redirects")


def _get_retried(client, url: str, headers: dict[str, str], max_bytes: int, cut: bool) -> str | bytes:
    """The body of ``url`` (bytes), or the target of its redirect (str), after retrying transient failures
    (429, 5xx, resets, timeouts) with a doubling delay."""
    import httpx

    config = engine_config()
    delay, attempt, retries = config.http_retry_delay, 0, config.http_max_retry
    while True:
        try:
            return _get_once(client, url, headers, max_bytes, cut, retry=attempt < retries)
        except (_Transient, httpx.TransportError) as err:
            if attempt >= retries:
                raise UnreadableInputError(f"{mask_url(url)} could not be read: {mask_text(str(err))}") from err
            time.sleep(delay)
            delay, attempt = delay * 2, attempt + 1


def _get_once(client, url: str, headers: dict[str, str], max_bytes: int, cut: bool, retry: bool) -> str | bytes:
    with client.stream("GET", url, headers=headers) as answer:
        if answer.is_redirect:
            return str(answer.headers["location"])
        if answer.status_code in RETRIED and retry:
            raise _Transient(f"HTTP {answer.status_code}")
        if answer.status_code not in (200, 206):
            raise UnreadableInputError(f"{mask_url(url)}: the server answered HTTP {answer.status_code}")
        body = bytearray()
        for chunk in answer.iter_bytes():
            body += chunk
            if len(body) > max_bytes and cut:
                return bytes(body[:max_bytes])
            if len(body) > max_bytes:
                raise UnreadableInputError(f"{mask_url(url)}: more than {max_bytes} bytes")
        return bytes(body)


class _Transient(Exception):
    """A retried answer (429, 5xx)."""


__all__ = [
    "RemoteUrl",
    "configure_remote_reads",
    "gdal_options",
    "http_get",
    "mask_text",
    "mask_url",
    "parse_remote",
]
