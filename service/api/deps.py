"""The routes' dependencies, as ``Annotated`` aliases: the settings, the jobs, the metrics, the caller's key."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from tileseg.api.errors import AuthenticationError
from tileseg.api.prometheus import ServiceMetrics
from tileseg.jobs.batches import BatchService
from tileseg.jobs.service import JobService
from tileseg.settings import Settings, get_settings

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Needed on every route but the health probes when the server has keys.",
)

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_jobs(request: Request) -> JobService:
    """The app's job service (made in its lifespan)."""
    return request.app.state.jobs


JobsDep = Annotated[JobService, Depends(get_jobs)]


def get_batches(request: Request) -> BatchService:
    """The app's batches (made in its lifespan, over its job service)."""
    return request.app.state.batches


BatchesDep = Annotated[BatchService, Depends(get_batches)]


def get_metrics(request: Request) -> ServiceMetrics:
    """The app's metrics (made in its lifespan)."""
    return request.app.state.metrics


MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]


def get_owner(settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)] = None) -> str | None:
    """Who is asking: None when the server has no keys, else a digest of the caller's key (a key sees its
    own jobs only). Each configured key is compared in constant time, all of them, whatever matches.

    Raises:
        AuthenticationError: the server has keys and the request has none of them.
    """
    if not settings.api_keys:
        return None
    given = (key or "").encode()
    match = False
    for candidate in settings.api_keys:
        match |= hmac.compare_digest(given, candidate.encode())
    if not key or not match:
        raise AuthenticationError(
            "this server needs an API key: send it in the X-API-Key header"
            if not key
            else "the X-API-Key is not one of this server's keys"
        )
    return hashlib.sha256(given).hexdigest()[:32]


OwnerDep = Annotated[str | None, Depends(get_owner)]

__all__ = [
    "BatchesDep",
    "JobsDep",
    "MetricsDep",
    "OwnerDep",
    "SettingsDep",
    "api_key_header",
    "get_batches",
    "get_jobs",
    "get_metrics",
    "get_owner",
]
