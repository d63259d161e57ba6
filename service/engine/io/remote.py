"""Rasters in object storage and on web servers, read by range requests.

A user names a remote raster the way the rest of their tools do: ``s3://bucket/key`` or an ``https://`` (or
``http://``) URL. GDAL reads such a file through its virtual file systems, fetching only the byte ranges that
the blocks of a window need (a Cloud Optimized GeoTIFF's header, then its tiles): :class:`RemoteUrl` turns a
URL into the ``/vsis3/`` or ``/vsicurl/`` path GDAL opens, so that nobody writes a ``/vsi`` path by hand.

Credentials and endpoints come from the variables boto3 and the AWS CLI read (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, which
GDAL reads as they are, and ``AWS_ENDPOINT_URL``, which it does not: :func:`gdal_options` translates it).
:mod:`.gdalconfig` sets these, with the retry policy and the time-outs, as process-wide GDAL options: a
``rasterio.Env`` reaches only the thread that entered it, and the engine reads from several threads.

Messages name a URL only through :meth:`RemoteUrl.masked`: its user name, password and query string (where
presigned URLs carry their signature) never reach a log or an error.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from tileseg.config import engine_config
from tileseg.engine.errors import NoRangeSupportError, SourceUnavailableError, UnreadableInputError
from tileseg.engine.io import pinning
from tileseg.engine.io.gdalconfig import RETRY_CODES, apply, gdal_options
from tileseg.urls import mask_text, mask_url

SCHEMES = ("s3", "https", "http")


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
        return f"/vsicurl/{pinning.gdal_url(self.url)}"

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
        spellings = {self.gdal_path, self.gdal_path.removeprefix("/vsicurl/"), self.url}
        for secret in sorted(spellings, key=len, reverse=True):
            text = text.replace(secret, self.masked)
        query = urlsplit(self.url).query
        if query:  # GDAL's TIFF driver names the file by its last segment, query string and all
            text = text.replace(f"?{query}", "?***")
        return mask_text(text)

    def __str__(self) -> str:
        return self.masked


# what GDAL says when a request, not the content, failed: the server was not reached or answered an error
TRANSPORT_MARKS = ("CURL error", "HTTP response code", "HTTP error code", "timed out", "Timeout was reached")


def not_answered(message: str) -> bool:
    """Whether GDAL's ``message`` tells of a failed request (no answer, a time-out, an HTTP error)."""
    return any(mark.lower() in message.lower() for mark in TRANSPORT_MARKS)


def no_range_message(path: RemoteUrl) -> str:
    """Why a source whose server ignores Range cannot be read where it lies, and what to do."""
    return (
        f"{path.masked}: its server does not support Range requests (it answers a byte range with the whole "
        "file), which reading a raster where it lies needs. The command line and the service fetch such a file "
        "whole (up to TILESEG_FETCH_MAX_BYTES, TILESEG_MAX_UPLOAD_BYTES); or serve it from a server that honours "
        "Range"
    )


def remote_failure(path: RemoteUrl, err: Exception, seconds: float = 0.0) -> UnreadableInputError:
    """The error of a remote read that failed after ``seconds``: a time-out says the source stopped answering.

    GDAL reports a read that libcurl gave up on (no byte for ``GDAL_HTTP_LOW_SPEED_TIME``) as a short block
    ("got 0 bytes"), naming no time-out: a read that failed only after the read time-out had passed is taken
    for one.
    """
    said = path.scrub(str(err)).replace("\n", " ")
    if "response_code=200" in said:  # a byte range answered with the whole file
        return NoRangeSupportError(no_range_message(path))
    timeout = engine_config().http_read_timeout
    if "timed out" in said.lower() or "timeout was reached" in said.lower() or seconds >= timeout:
        return SourceUnavailableError(
            f"{path.masked} could not be read: the source stopped answering (nothing for {timeout:g} s, "
            f"TILESEG_HTTP_READ_TIMEOUT, after the retries)" + (f": {said}" if "time" in said.lower() else "")
        )
    return UnreadableInputError(f"{path.masked} could not be read: {said}")


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


def configure_remote_reads() -> None:
    """Set the remote reads' GDAL options for the whole process, from the configuration and the environment
    now (:func:`tileseg.engine.io.gdalconfig.apply`; every opening of a raster calls it)."""
    apply()


MAX_HOPS = 5  # redirects followed, at most, by :func:`http_get`


def http_timeout():
    """httpx's time-outs from the configuration: a connection within ``http_connect_timeout``, and no silence
    longer than ``http_read_timeout`` between the bytes of an answer."""
    import httpx

    config = engine_config()
    return httpx.Timeout(config.http_read_timeout, connect=config.http_connect_timeout)


def transport_error(url: str, err: Exception) -> UnreadableInputError:
    """The error of a request that failed below HTTP: a time-out says the source stopped answering."""
    import httpx

    if isinstance(err, httpx.ConnectTimeout):
        seconds = engine_config().http_connect_timeout
        return SourceUnavailableError(
            f"{mask_url(url)} could not be read: no connection within {seconds:g} s (TILESEG_HTTP_CONNECT_TIMEOUT)"
        )
    if isinstance(err, httpx.TimeoutException):
        return SourceUnavailableError(
            f"{mask_url(url)} could not be read: the source stopped answering (nothing for "
            f"{engine_config().http_read_timeout:g} s, TILESEG_HTTP_READ_TIMEOUT)"
        )
    return UnreadableInputError(f"{mask_url(url)} could not be read: {mask_text(str(err))}")


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
    with httpx.Client(follow_redirects=False, timeout=http_timeout(), trust_env=False) as client:
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
                if isinstance(err, _Transient):
                    raise UnreadableInputError(f"{mask_url(url)} could not be read: {err}") from err
                raise transport_error(url, err) from err
            time.sleep(delay)
            delay, attempt = delay * 2, attempt + 1


def _get_once(client, url: str, headers: dict[str, str], max_bytes: int, cut: bool, retry: bool) -> str | bytes:
    target, pin_headers, extensions = pinning.request_target(url)
    with client.stream("GET", target, headers={**headers, **pin_headers}, extensions=extensions) as answer:
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
    "http_timeout",
    "transport_error",
    "mask_text",
    "mask_url",
    "no_range_message",
    "not_answered",
    "parse_remote",
    "remote_failure",
]
