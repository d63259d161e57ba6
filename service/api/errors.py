"""The HTTP layer's own errors, one mapping from the product's errors to HTTP status codes, and the
handlers that answer with it.

Every error answer is ``{"error": {"code", "message"}}``: the product's errors (by their ``code``, else by
the builtin they inherit), FastAPI's validation errors (400: the request is malformed), Starlette's
HTTP errors (unknown route, wrong method) and, last, anything unexpected (500, logged, no details).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tileseg.engine.errors import TooLargeError
from tileseg.errors import TilesegError

log = logging.getLogger(__name__)


class RequestError(TilesegError, ValueError):
    """A request that is malformed: a missing or unparsable field, both or neither of file and source."""

    code = "bad_request"


class UploadTooLargeError(TooLargeError):
    """The request body carries more bytes than the server accepts."""

    code = "upload_too_large"


class AuthenticationError(TilesegError, PermissionError):
    """A missing or unknown API key."""

    code = "unauthorized"


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable: bad_request, job_not_found, band_mismatch, ...")
    message: str = Field(description="What went wrong, and what to do about it.")


class ErrorBody(BaseModel):
    """Every error answer, FastAPI's own validation errors included."""

    error: ErrorDetail


STATUS_BY_CODE = {
    "bad_request": 400,
    "bad_input": 400,
    "source_not_allowed": 400,
    "shards_need_queue": 400,
    "no_instance_output": 400,  # instances=true with a model that makes no objects: the message names those that do
    "callback_not_allowed": 400,  # a callback URL not under TILESEG_CALLBACK_ALLOW: refused before any request
    "batch_not_found": 404,
    "batch_too_large": 413,  # a batch larger than TILESEG_BATCH_MAX_JOBS: never taken, however long one waits
    "too_many_jobs": 429,  # the key's jobs queued or running would pass TILESEG_BATCH_MAX_JOBS: taken later
    "unauthorized": 401,
    "job_not_found": 404,
    "model_not_found": 404,
    "no_such_result": 404,
    "no_such_tile": 404,
    "not_ready": 409,
    "job_failed": 409,
    "expired": 410,
    "canceled": 410,
    "too_large": 413,
    "upload_too_large": 413,
    "unsupported_format": 415,
    "unreadable_input": 415,  # the content is not a complete raster in a format we take
    "no_range_support": 422,  # a server without Range requests, and the file too large to fetch whole
    "source_unavailable": 502,  # a remote source that does not answer, or stopped answering
    "stac_api_unavailable": 502,  # a batch's stac_search: the API does not answer as a STAC API
    "unknown_collection": 400,  # a batch's stac_search names a collection the API does not have
    "no_inputs": 400,  # a batch's stac_search matched no item
    "band_mismatch": 422,
    "pixel_size": 422,
    "bad_roi": 422,
    "unsupported_dtype": 422,
    "bad_tile_settings": 422,
    "bad_options": 422,
    "bad_tile": 422,
    "object_store_error": 503,  # the results' bucket does not answer, or refuses the server's credentials
}
STATUS_BY_BUILTIN = ((PermissionError, 403), (FileNotFoundError, 410), (LookupError, 404), (ValueError, 400))

# What each route may answer besides success, for the OpenAPI schema.
ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Malformed request (a missing or invalid field or parameter).",
        401: "Missing or unknown X-API-Key.",
        404: "Unknown job or model (another key's jobs look unknown).",
        409: "The result is not ready (queued, running) or never will be (failed).",
        410: "The result expired, or the job was canceled.",
        413: "Too many bytes, or too many pixels.",
        415: "Not a raster in an accepted format (checked by content), or truncated.",
        422: "Bands, data type or options the model cannot take; a tile address outside the scheme.",
        429: "The key has too many jobs queued or running (TILESEG_BATCH_MAX_JOBS): try again once some have ended.",
        502: "A remote `source` did not answer in time (TILESEG_HTTP_CONNECT_TIMEOUT, TILESEG_HTTP_READ_TIMEOUT).",
        503: "Results kept in S3 (TILESEG_RESULTS_URL), and the bucket does not answer: try again later.",
    }.items()
}


def describe_validation(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic's validation errors in one line: ``tile: Input should be a valid integer; ...``."""
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",)) or "request"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def status_for(err: TilesegError) -> int:
    """The HTTP status of a product error: by the first ``code`` in its class hierarchy that has one, else
    by the builtin it inherits, else 500 (an error of the server's own making, such as a bad checkpoint)."""
    for cls in type(err).__mro__:
        code = cls.__dict__.get("code")
        if code in STATUS_BY_CODE:
            return STATUS_BY_CODE[code]
    for builtin, status in STATUS_BY_BUILTIN:
        if isinstance(err, builtin):
            return status
    return 500


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer in the one shape."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def _product_error(request: Request, err: TilesegError) -> JSONResponse:
    status = status_for(err)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, err)
    retry = {"Retry-After": "30"} if status in (429, 503) else None  # busy, or the bucket away: later
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else retry
    return error_response(status, err.code, str(err), headers)


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    return error_response(400, "bad_request", describe_validation(list(err.errors())))


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 400: "bad_request"}


async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(err.status_code, "http_error")
    headers = dict(getattr(err, "headers", None) or {})
    if err.status_code == 405:
        # Starlette names the methods of the first route that matched the path only; a path served by
        # several routes (GET and DELETE /jobs/{id}) allows the methods of all of them
        methods = set()
        for route in request.app.router.routes:
            if route.matches(request.scope)[0] is not Match.NONE:
                methods |= set(getattr(route, "methods", None) or ())
        headers["Allow"] = ", ".join(sorted(methods))
    return error_response(err.status_code, code, str(err.detail), headers or None)


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error: the server logged it")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``, and declare its validation errors as they are answered."""
    app.add_exception_handler(TilesegError, _product_error)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    _declare_validation_errors(app)


def _declare_validation_errors(app: FastAPI) -> None:
    """FastAPI declares a 422 with its own body on every route with parameters; here validation errors
    are 400s in the one shape (declared on each route), so its 422s and their schemas leave the schema."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    default = operation.get("responses", {}).get("422", {})
                    if "HTTPValidationError" in str(default):
                        del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to change the schema


__all__ = [
    "ERROR_RESPONSES",
    "STATUS_BY_CODE",
    "AuthenticationError",
    "ErrorBody",
    "ErrorDetail",
    "RequestError",
    "UploadTooLargeError",
    "describe_validation",
    "error_response",
    "install",
    "status_for",
]
