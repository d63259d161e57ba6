"""The allow-list of URLs the server may reach: one rule for what it reads (a job's ``source``, under
``TILESEG_SOURCE_ALLOW``) and where it posts (a job's callbacks, under ``TILESEG_CALLBACK_ALLOW``).

A URL is taken when it lies under one of the listed prefixes (the same scheme, host and port, and a path below
the prefix's folder), carries no credentials, no ``.`` or ``..`` segments and nothing GDAL would read as a
driver; and, for http(s), when its host resolves to public addresses only, unless the prefix names the host by
its address (an internal server listed on purpose). The address checked is pinned for this process
(:mod:`tileseg.engine.io.pinning`), so that a name answering a public address to the check cannot send the
request itself to a private one (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import unquote, urlsplit

from tileseg.engine.io import pinning
from tileseg.engine.io.remote import RemoteUrl
from tileseg.errors import TilesegError
from tileseg.jobs.errors import SourceNotAllowedError
from tileseg.urls import mask_url

# GDAL's own connection strings: they name drivers and files directly, around every check here
RAW_GDAL = ("MEM:", "VRT:", "GTIFF_DIR:", "/VSI", "GDAL:")
DEFAULT_PORTS = {"https": 443, "http": 80}


def allowed_url(
    text: str,
    allow: list[str],
    what: str = "`source`",
    setting: str = "TILESEG_SOURCE_ALLOW",
    error: type[TilesegError] = SourceNotAllowedError,
) -> RemoteUrl:
    """The :class:`RemoteUrl` of ``text`` when it lies under a prefix of ``allow``; checked from the text and,
    for http(s), from the addresses its host resolves to, before any request is made.

    Refused: raw GDAL paths (``/vsi...``, ``MEM:::``), schemes other than s3/https/http (``file:``), user
    information in the URL, ``.`` or ``..`` segments (plain or percent-encoded), a VRT, any other bucket, host,
    port or folder, and a host that resolves to a loopback, private, link-local or otherwise non-public
    address unless the prefix names that host by its address (an internal server listed on purpose).

    Args:
        text: the URL.
        allow: the prefixes (a setting's list).
        what: how messages name the URL (```source```, ```callback```).
        setting: the setting that lists the prefixes, named in messages.
        error: the error raised.

    Raises:
        SourceNotAllowedError (or ``error``): with the reason, the URL masked.
    """
    shown = mask_url(text) if "://" in text else "a GDAL path"
    if not allow:
        paths = "; give a path under one of the server's input folders instead" if what == "`source`" else ""
        raise error(f"{what} {shown} is refused: this server lists no URLs for it ({setting} is not set){paths}")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if text.upper().startswith(RAW_GDAL) or text.startswith("\\\\") or scheme not in ("s3", "https", "http"):
        raise error(f"{what} {shown}: only s3://, https:// and http:// URLs are taken")
    if "\x00" in text or "\\" in text or parts.username is not None or parts.password is not None:
        raise error(f"{what} {shown}: credentials or odd characters in a URL are refused")
    segments = unquote(parts.path).split("/")
    if any(seg in (".", "..") for seg in segments) or "%2f" in parts.path.lower():
        raise error(f"{what} {shown}: '.' and '..' segments are refused")
    if parts.path.lower().endswith(".vrt"):
        raise error(f"{what} {shown}: a VRT names other files; it is refused")
    if scheme == "s3" and (parts.query or parts.fragment):
        raise error(f"{what} {shown}: an s3:// URL takes no query")
    prefix = next((p for p in allow if _under(parts, urlsplit(p))), None)
    if prefix is None:
        raise error(f"{what} {shown} is not under a prefix of {setting}")
    if scheme != "s3":
        _public_host(parts, text, f"{what} {shown}", setting, error)
    return RemoteUrl(text)


def _port(parts) -> int | None:
    return parts.port or DEFAULT_PORTS.get(parts.scheme.lower())


def _under(url, prefix) -> bool:
    """Whether ``url`` lies under the folder ``prefix`` (same scheme, host and port; a path below its path)."""
    folder = prefix.path if prefix.path.endswith("/") else prefix.path + "/"
    return (
        url.scheme.lower() == prefix.scheme.lower()
        and (url.hostname or "") == (prefix.hostname or "")
        and _port(url) == _port(prefix)
        and url.path.startswith(folder)
        and len(url.path) > len(folder)
    )


def _public_host(parts, url: str, shown: str, setting: str, error: type[TilesegError]) -> None:
    """Refuse a host that resolves to a non-public address, unless the URL names an address itself (which
    then matched a listed prefix: the operator listed that address); pin the address checked, so that this
    process reaches the host there and nowhere else (:mod:`tileseg.engine.io.pinning`: DNS rebinding)."""
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, _port(parts), proto=socket.IPPROTO_TCP)}
    except OSError as err:
        raise error(f"{shown}: its host does not resolve") from err
    inner = sorted(a for a in found if not ipaddress.ip_address(str(a).split("%")[0]).is_global)
    if inner:
        raise error(
            f"{shown}: its host resolves to a non-public address ({inner[0]}); list the server by its address in "
            f"{setting} to reach it"
        )
    pinning.pin(url, sorted(found)[0])


__all__ = ["DEFAULT_PORTS", "RAW_GDAL", "allowed_url"]
