"""Reads pinned to a checked address: a host that resolved to an allowed address when it was checked must not
be read at another one (DNS rebinding: a name that answers a public address to the check and a private one to
the read).

A server checks a ``source`` URL's host by resolving it (``tileseg.jobs.intake``) and then :func:`pin` s the
address it checked. From then on, in this process:

* GDAL reads ``http://`` URLs of that host at the address itself: :meth:`RemoteUrl.gdal_path
  <tileseg.engine.io.remote.RemoteUrl.gdal_path>` names the address, and :func:`prepare` gives those paths the
  original ``Host`` header (a GDAL option for that path only), so the server sees the request it expects.
  GDAL 3.10 has no option for libcurl's ``CURLOPT_RESOLVE``; this is what it offers.
* :func:`request_target` does the same for httpx (the Range probe, a whole fetch): the URL names the address,
  the ``Host`` header and, for ``https://``, the TLS server name (SNI, and the certificate checked against it)
  stay the host's.

``https://`` read by GDAL is not pinned: GDAL connects to whatever libcurl resolves, and a rebound address
would have to present a valid certificate for the host's name, which a private server does not (GDAL checks
certificates unless ``GDAL_HTTP_UNSAFESSL`` is set).
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit, urlunsplit

from tileseg.engine.io import gdalconfig

DEFAULT_PORTS = {"https": 443, "http": 80}
_lock = threading.Lock()
_pins: dict[tuple[str, str, int], str] = {}  # (scheme, host, port) -> the address checked


def _key(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), parts.port or DEFAULT_PORTS[scheme]


def pin(url: str, address: str) -> None:
    """Read ``url``'s host (with its scheme and port) at ``address`` from now on, in this process."""
    key = _key(url)
    if key is not None:
        with _lock:
            _pins[key] = address


def pinned(url: str) -> str | None:
    """The address ``url``'s host is pinned to, or None."""
    key = _key(url)
    return None if key is None else _pins.get(key)


def _at_address(url: str, address: str) -> tuple[str, str]:
    """``url`` with its host replaced by ``address``, and the ``Host`` header the original asks for."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc)), parts.netloc.rsplit("@", 1)[-1]


def gdal_url(url: str) -> str:
    """The URL GDAL requests for ``url``: at its pinned address for a pinned ``http://`` host, else ``url``."""
    address = pinned(url)
    if address is None or urlsplit(url).scheme.lower() != "http":
        return url
    return _at_address(url, address)[0]


def prepare(url: str) -> None:
    """Give GDAL's requests of a pinned ``http://`` ``url`` its ``Host`` header (an option of that path only)."""
    address = pinned(url)
    if address is None or urlsplit(url).scheme.lower() != "http":
        return
    target, host = _at_address(url, address)
    gdalconfig.set_path_option(f"/vsicurl/{target.split('?', 1)[0]}", "GDAL_HTTP_HEADERS", f"Host: {host}")


def request_target(url: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """How httpx requests ``url``: the URL to request, extra headers, and request extensions (the TLS server
    name); at the pinned address when the host is pinned."""
    address = pinned(url)
    if address is None:
        return url, {}, {}
    target, host = _at_address(url, address)
    extensions = {"sni_hostname": urlsplit(url).hostname or ""} if url.lower().startswith("https:") else {}
    return target, {"Host": host}, extensions


def clear() -> None:
    """Forget every pin (tests)."""
    with _lock:
        _pins.clear()


__all__ = ["clear", "gdal_url", "pin", "pinned", "prepare", "request_target"]
