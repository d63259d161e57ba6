"""Callbacks: where a job's or a batch's status is posted when it changes, checked as sources are, and each
delivery signed.

A callback URL must lie under a prefix of ``TILESEG_CALLBACK_ALLOW``, by the rules of ``TILESEG_SOURCE_ALLOW``
(:func:`tileseg.jobs.allowlist.allowed_url`: scheme, host, port and folder; a host that resolves to a private
address refused unless listed by its address), checked when the job is submitted and again before each
attempt, which then goes to the address checked. A delivery is a POST of JSON with the headers:

* ``X-Tileseg-Delivery``: the delivery's id, the same in each retry of it (and in the body, ``delivery``);
* ``X-Tileseg-Event``: the job status that sent it (``running``, ``succeeded``, ``failed``, ``canceled``), or
  ``finished`` for a batch;
* ``X-Tileseg-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the exact body bytes with
  ``TILESEG_CALLBACK_SECRET``.

A 2xx answer delivers it; anything else (another status, no connection, no answer within
``TILESEG_CALLBACK_TIMEOUT``) is retried after 1, 2, 4 ... seconds (at most :data:`MAX_RETRY_WAIT`) until
``TILESEG_CALLBACK_RETRY_FOR`` seconds have passed since it was queued. Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx

from tileseg import __version__
from tileseg.engine.io import pinning
from tileseg.jobs.allowlist import allowed_url
from tileseg.jobs.errors import CallbackNotAllowedError
from tileseg.jobs.store import JobStatus
from tileseg.urls import mask_url

SETTING = "TILESEG_CALLBACK_ALLOW"
MAX_RETRY_WAIT = 300.0  # seconds: a receiver down for long is still tried every five minutes
MAX_URL = 2048
# The OGC API - Processes subscriber's URIs, by the job status that posts to each.
SUBSCRIBER = {"inProgressUri": JobStatus.RUNNING, "successUri": JobStatus.SUCCEEDED, "failedUri": JobStatus.FAILED}
# A tileseg `callback`: posted once, when the job ends (each job of a batch, then the batch).
FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class DeliveryError(Exception):
    """One attempt at a delivery failed: what happened, for the outbox's ``last_error`` (the URL masked)."""


def check_callback(url: Any, allow: list[str], field: str = "`callback`") -> str:
    """``url`` when the server may post to it (an http(s) URL under a prefix of ``allow``).

    Raises:
        CallbackNotAllowedError: anything else, before any request is made.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise CallbackNotAllowedError(f"{field} is an http(s) URL of at most {MAX_URL} characters")
    if not url.lower().startswith(("http://", "https://")):
        raise CallbackNotAllowedError(f"{field} {mask_url(url)}: only http:// and https:// URLs are posted to")
    allowed_url(url, allow, what=field, setting=SETTING, error=CallbackNotAllowedError)
    return url


def job_callbacks(allow: list[str], callback: str | None = None, subscriber: Any = None) -> dict[str, str] | None:
    """Where a job's callbacks go, by the status that sends each (the job record's ``callback``): a tileseg
    ``callback`` gets the job's end; an OGC ``subscriber`` its ``inProgressUri``, ``successUri`` and
    ``failedUri``. None when neither is given.

    Raises:
        CallbackNotAllowedError: a URL the server may not post to, or a subscriber that is not an object of URIs.
    """
    targets: dict[str, str] = {}
    if callback is not None:
        url = check_callback(callback, allow)
        targets.update({status.value: url for status in FINAL})
    if subscriber is not None:
        if not isinstance(subscriber, dict) or not set(subscriber) <= set(SUBSCRIBER) or not subscriber:
            raise CallbackNotAllowedError(
                f"`subscriber` is an object of {', '.join(SUBSCRIBER)} (successUri needed): {str(subscriber)[:200]}"
            )
        if "successUri" not in subscriber:
            raise CallbackNotAllowedError("`subscriber` needs a successUri")
        for key, status in SUBSCRIBER.items():
            if subscriber.get(key) is not None:
                targets[status.value] = check_callback(subscriber[key], allow, f"`subscriber.{key}`")
    return targets or None


def signature(body: bytes, secret: str) -> str:
    """The ``X-Tileseg-Signature`` of ``body``: ``sha256=<hex HMAC-SHA256 of the exact bytes with secret>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(url: str, body: bytes, delivery_id: str, event: str, secret: str, timeout: float, allow: list[str]) -> None:
    """One attempt at a delivery: the URL checked again (and its address pinned), then posted to that address.

    Raises:
        DeliveryError: the URL is no longer allowed, no connection, no answer in time, or a status other than 2xx.
    """
    try:
        check_callback(url, allow)
    except CallbackNotAllowedError as err:
        raise DeliveryError(str(err)) from None
    target, host, extensions = pinning.request_target(url)
    headers = {
        **host,
        "Content-Type": "application/json",
        "User-Agent": f"tileseg/{__version__}",
        "X-Tileseg-Delivery": delivery_id,
        "X-Tileseg-Event": event,
        "X-Tileseg-Signature": signature(body, secret),
    }
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            answer = client.post(target, content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as err:
        raise DeliveryError(f"{mask_url(url)}: {type(err).__name__}: {err}") from None
    if not 200 <= answer.status_code < 300:
        raise DeliveryError(f"{mask_url(url)} answered HTTP {answer.status_code}")


def retry_wait(attempts: int) -> float:
    """Seconds before the next attempt, after ``attempts`` failed ones: 1, 2, 4 ... up to MAX_RETRY_WAIT."""
    return min(float(2 ** max(attempts - 1, 0)), MAX_RETRY_WAIT)


__all__ = [
    "FINAL",
    "MAX_RETRY_WAIT",
    "SUBSCRIBER",
    "DeliveryError",
    "check_callback",
    "job_callbacks",
    "post",
    "retry_wait",
    "signature",
]
