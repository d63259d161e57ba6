"""Web servers that ignore Range requests: found out with one small request, then the file fetched whole.

GDAL reads a remote raster by byte ranges. A server that ignores ``Range`` (Python's ``http.server``, some
CDNs and proxies) answers every request with the whole file and status 200; GDAL then reports that the file
"is not recognized as being in a supported file format", which sends a user after the wrong problem.
:func:`probe_range` asks for the first byte: a 206 means ranges work; a 200 means they do not. Such a source is
then fetched whole (:func:`fetch_whole`: streamed to a file, counted, refused past a limit) and read locally,
or refused with :class:`~tileseg.engine.errors.NoRangeSupportError`, whose message names the missing Range
support.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from tileseg.config import engine_config
from tileseg.engine.errors import NoRangeSupportError, UnreadableInputError
from tileseg.engine.io import pinning
from tileseg.engine.io.remote import MAX_HOPS, RETRIED, RemoteUrl, http_timeout, no_range_message, transport_error
from tileseg.urls import mask_url

CHUNK = 1 << 20


@dataclass(frozen=True)
class RangeProbe:
    """What the first byte's request told: the URL that answered (after redirects), whether the server
    honours Range, and the file's length where it said."""

    url: str
    ranges: bool
    length: int | None


@contextlib.contextmanager
def _answer(url: str, headers: dict[str, str], hop: Callable[[str], None] | None) -> Iterator[tuple[str, Any]]:
    """The streamed answer of ``url`` (redirects followed one hop at a time through ``hop``, transient answers
    retried as the range reads are), and the URL that gave it."""
    import httpx

    config = engine_config()
    with httpx.Client(follow_redirects=False, timeout=http_timeout(), trust_env=False) as client:
        delay, attempt = config.http_retry_delay, 0
        for _ in range(MAX_HOPS * (config.http_max_retry + 1) + 1):
            target, pinned, extensions = pinning.request_target(url)
            given = False
            try:
                with client.stream("GET", target, headers={**headers, **pinned}, extensions=extensions) as answer:
                    if answer.is_redirect:
                        url = urljoin(url, answer.headers["location"])
                        if hop is not None:
                            hop(url)
                        continue
                    if answer.status_code in RETRIED and attempt < config.http_max_retry:
                        raise _Again()
                    if answer.status_code not in (200, 206):
                        raise UnreadableInputError(f"{mask_url(url)}: the server answered HTTP {answer.status_code}")
                    given = True
                    yield url, answer
                    return
            except (_Again, httpx.TransportError) as err:
                if given:  # the caller's reading failed: not retried here
                    raise
                if attempt >= config.http_max_retry:
                    raise transport_error(url, err) from err
                time.sleep(delay)
                delay, attempt = delay * 2, attempt + 1
    raise UnreadableInputError(f"{mask_url(url)}: more than {MAX_HOPS} redirects")


class _Again(Exception):
    """A retried answer (429, 5xx)."""


def probe_range(remote: RemoteUrl, hop: Callable[[str], None] | None = None) -> RangeProbe:
    """Ask an http(s) source for its first byte: does its server honour Range?

    Raises:
        UnreadableInputError: no answer, or an error status, after retries (a time-out says so).
        Whatever ``hop`` raises (a redirect refused).
    """
    with _answer(remote.url, {"Range": "bytes=0-0"}, hop) as (final, answer):
        ranged = answer.status_code == 206
        total = answer.headers.get("content-range", "").rsplit("/", 1)[-1] if ranged else None
        length = answer.headers.get("content-length")
        size = int(total) if total and total.isdigit() else (None if ranged or not length else int(length))
        return RangeProbe(final, ranged, size)


def fetch_whole(remote: RemoteUrl, dest: Path, max_bytes: int, hop: Callable[[str], None] | None = None) -> Path:
    """Fetch ``remote`` whole into ``dest`` (a server without Range): streamed, counted, removed and refused
    once past ``max_bytes``. The file appears only when complete.

    Raises:
        NoRangeSupportError: the file is larger than ``max_bytes``.
        UnreadableInputError: no answer, an error status, or the source stopped answering.
    """
    import httpx

    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with _answer(remote.url, {}, hop) as (_final, answer), open(tmp, "wb") as out:
            declared = answer.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise too_large(remote, max_bytes, int(declared))
            count = 0
            for chunk in answer.iter_bytes(CHUNK):
                count += len(chunk)
                if count > max_bytes:
                    raise too_large(remote, max_bytes)
                out.write(chunk)
        os.replace(tmp, dest)
        return dest
    except httpx.TransportError as err:
        raise transport_error(remote.url, err) from err
    finally:
        tmp.unlink(missing_ok=True)


def too_large(remote: RemoteUrl, max_bytes: int, size: int | None = None) -> NoRangeSupportError:
    """The refusal of a source whose server does not honour Range and that is too large to fetch whole."""
    said = f"{size} bytes" if size is not None else f"more than {max_bytes} bytes"
    return NoRangeSupportError(
        f"{remote.masked}: its server does not support Range requests (it answers a byte range with the whole "
        f"file), so the file would have to be fetched whole, and it has {said}; the limit is {max_bytes}. Serve "
        "it from a server that honours Range (any S3-compatible store, nginx, Apache), or send it as an upload"
    )


def without_ranges(remote: RemoteUrl, dest: Path, max_bytes: int, hop=None) -> Path | None:
    """Where ``remote`` was fetched to when its server ignores Range (``dest``), or None when it honours it
    (or is no http(s) URL) and is read by ranges where it is.

    Raises:
        NoRangeSupportError, UnreadableInputError; whatever ``hop`` raises.
    """
    if remote.scheme == "s3":
        return None
    probe = probe_range(remote, hop)
    if probe.ranges:
        return None
    if probe.length is not None and probe.length > max_bytes:
        raise too_large(remote, max_bytes, probe.length)
    return fetch_whole(remote, dest, max_bytes, hop)


@contextlib.contextmanager
def readable(source) -> Iterator:
    """``source``, or, for an http(s) raster whose server ignores Range, a temporary local copy of it (up to
    ``TILESEG_FETCH_MAX_BYTES``; the command line's way), removed on leaving.

    Raises:
        NoRangeSupportError, UnreadableInputError.
    """
    from tileseg.engine.io.remote import parse_remote
    from tileseg.engine.io.stac import is_item_name

    remote = parse_remote(source) if isinstance(source, str) else None
    if remote is None or remote.scheme == "s3" or is_item_name(remote):
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="tileseg-fetch-") as folder:
        fetched = without_ranges(remote, Path(folder) / remote.name, engine_config().fetch_max_bytes)
        yield source if fetched is None else str(fetched)


def range_refusal(remote: RemoteUrl) -> NoRangeSupportError | None:
    """Why GDAL could not read ``remote`` as a raster when its server ignores Range (then the error to raise in
    place of GDAL's format error), or None. Asks the server once; a failing answer here says nothing."""
    if remote.scheme == "s3":
        return None
    try:
        ranged = probe_range(remote).ranges
    except UnreadableInputError:
        return None
    if ranged:
        return None
    return NoRangeSupportError(no_range_message(remote))


__all__ = ["RangeProbe", "fetch_whole", "probe_range", "range_refusal", "readable", "too_large", "without_ranges"]
