"""The HTTP exchange under :class:`~tileseg.client.Client`: one request, tried again when the server asks for it
(429, 503) or, where that is safe, when no answer came, waiting as its ``Retry-After`` says; an error answer
raises the typed error of :mod:`tileseg.client.errors`."""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin

import httpx

from tileseg.client.errors import ServerError, Unreachable, error_of

RETRY_STATUSES = frozenset({429, 503})


class Exchange:
    """The requests of a client of one server, by its ``url`` with its httpx client, ``retries`` and
    ``max_wait`` (which :class:`~tileseg.client.Client` sets)."""

    url: str
    retries: int
    max_wait: float
    _http: httpx.Client

    def _json(self, method: str, route: str, **kwargs: Any) -> Any:
        response = self._request(method, route, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"{method} {route}: the answer is not JSON", status=response.status_code) from None

    def _request(
        self,
        method: str,
        route: str,
        build: Callable[[], dict[str, Any]] | None = None,
        stream: bool = False,
        retry_connect: bool = True,
    ) -> httpx.Response:
        """One request, tried again on 429/503 (and, if ``retry_connect``, when no answer came), waiting as the
        server's ``Retry-After`` says; an error answer raises the matching :class:`ClientError`.

        ``build`` makes the request's keyword arguments afresh for each try (an upload's file is re-opened).
        """
        url = urljoin(self.url, route)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            kwargs = build() if build else {}
            try:
                request = self._http.build_request(method, url, **kwargs)
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as err:
                if last or not retry_connect:
                    raise Unreachable(f"{method} {url}: {err or type(err).__name__}") from err
                time.sleep(min(2.0**attempt, self.max_wait))
                continue
            finally:
                _close_uploads(kwargs)
            if response.status_code in RETRY_STATUSES and not last:
                response.close()
                time.sleep(retry_after(response, attempt, self.max_wait))
                continue
            if response.status_code >= 400:
                if stream:
                    response.read()
                raise error_of(response)
            return response
        raise AssertionError("unreachable")  # the loop returns or raises on its last try


def retry_after(response: httpx.Response, attempt: int, max_wait: float) -> float:
    """Seconds to wait before trying again: the answer's ``Retry-After`` (seconds, or an HTTP date), else an
    exponential backoff of 1, 2, 4 ... seconds; at most ``max_wait``."""
    header = response.headers.get("Retry-After", "").strip()
    wait = 2.0**attempt
    if header.isdigit():
        wait = float(header)
    elif header:
        try:
            wait = parsedate_to_datetime(header).timestamp() - time.time()
        except (TypeError, ValueError):
            pass  # unparsable: the backoff
    return max(0.0, min(wait, max_wait))


def _close_uploads(kwargs: dict[str, Any]) -> None:
    files = kwargs.get("files")
    for part in files.values() if isinstance(files, dict) else ():
        if hasattr(part[1], "close"):
            part[1].close()


__all__ = ["RETRY_STATUSES", "Exchange", "retry_after"]
