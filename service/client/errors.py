"""The client's errors: every failure is a :class:`ClientError` carrying the server's ``code``, ``message`` and
HTTP ``status``; each subclass also inherits the builtin it resembles. :func:`error_of` makes the typed error of
an error answer from its status and its ``{"error": {"code", "message"}}`` body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx


class ClientError(Exception):
    """The root of the client's errors: what went wrong, with the server's error ``code`` and ``message``
    (from its ``{"error": {"code", "message"}}`` body) and the HTTP ``status`` where there was an answer."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class Refused(ClientError, ValueError):
    """The server refused the request (a 4xx answer): a bad option, an input it cannot take, a refused source."""


class Unauthorized(Refused, PermissionError):
    """401: the server needs an API key, or does not know the one given."""


class ModelNotFound(Refused, LookupError):
    """404 ``model_not_found``: the server does not serve that model (``Client.models()`` lists those it does)."""


class NotFound(Refused, LookupError):
    """404 for anything else: an unknown job (another key's jobs look unknown), a result the job did not ask for."""


class ServerError(ClientError, RuntimeError):
    """A 5xx answer (after the retries, for 503), or an answer that is not the API's."""


class Unreachable(ClientError, ConnectionError):
    """No answer: the server is down, the address is wrong, or the connection broke (after the retries)."""


class JobFailed(ClientError, RuntimeError):
    """The job ended in ``failed`` (or its results ``expired``); ``code`` and ``message`` are the job's error."""


class JobCanceled(ClientError):
    """The job was canceled (by a ``DELETE``, from this client or another)."""


def error_of(response: httpx.Response) -> ClientError:
    """The typed error of an error answer, with the server's code and message from its error body."""
    status = response.status_code
    try:
        body = response.json()
        detail: Mapping[str, Any] = (
            body["error"] if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
        )
    except ValueError:
        detail = {}
    code = detail.get("code")
    message = str(detail.get("message") or response.reason_phrase or f"HTTP {status}")
    text = f"{message} (HTTP {status}{f', {code}' if code else ''})"
    if status == 401:
        return Unauthorized(text, code, status)
    if status == 404:
        return (ModelNotFound if code == "model_not_found" else NotFound)(text, code, status)
    if 400 <= status < 500:
        return Refused(text, code, status)
    return ServerError(text, code, status)


__all__ = [
    "ClientError",
    "JobCanceled",
    "JobFailed",
    "ModelNotFound",
    "NotFound",
    "Refused",
    "ServerError",
    "Unauthorized",
    "Unreachable",
    "error_of",
]
