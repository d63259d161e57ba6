"""ASGI middleware of the app: counting responses by status code for ``/metrics``.

Plain ASGI rather than ``BaseHTTPMiddleware``, which would buffer streamed responses (file downloads).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ResponseCounter:
    """Calls ``record(status)`` for every HTTP response the app sends."""

    def __init__(self, app: ASGIApp, record: Callable[[int], None]):
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.record(message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)


__all__ = ["ResponseCounter"]
