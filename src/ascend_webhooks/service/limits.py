"""Request body size limits, enforced before a body is buffered and parsed.

Starlette buffers a whole request body before FastAPI parses it, so an oversized body must be
refused while it streams in: early from ``Content-Length`` (413 without reading a byte) and
again by counting the bytes actually received (a client may lie or stream chunked).

The limits follow the configured largest event body (``max_payload_bytes``), which is the body
as stored (compact, UTF-8), not as the client wrote it: JSON may write any character as an
escape, ``\\u0078`` being six bytes for one, so a single event's request may be six times that
plus an envelope allowance (the ``ordering_key``, whitespace), whatever the escaping of an event
that fits. A batch may carry many events (32 MiB, or a single event's limit if larger),
everything else is small. The built wire body of each event is checked against
``max_payload_bytes`` exactly, in the events route.
"""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem_response

__all__ = ["BodyLimitMiddleware", "RequestLimits"]

_EVENTS = re.compile(r"^/v1/organizations/[^/]+/events/?$")
_BATCH = re.compile(r"^/v1/organizations/[^/]+/events/batch/?$")
ENVELOPE_ALLOWANCE = 16 * 1024
#: The most request bytes one stored byte may take: ``\u00XX`` for one ASCII character (a
#: character of 2 to 4 bytes takes 6 or 12: three times or less).
ESCAPE_FACTOR = 6
MIN_BATCH_LIMIT = 32 * 1024 * 1024
OTHER_LIMIT = 1024 * 1024


class RequestLimits:
    """The largest request body accepted on each kind of route."""

    def __init__(self, max_payload_bytes: int) -> None:
        self.event = ESCAPE_FACTOR * max_payload_bytes + ENVELOPE_ALLOWANCE
        self.batch = max(MIN_BATCH_LIMIT, self.event)
        self.other = max(OTHER_LIMIT, self.event)

    def for_path(self, path: str) -> int:
        if _BATCH.match(path):
            return self.batch
        if _EVENTS.match(path):
            return self.event
        return self.other


def _too_large(limit: int) -> str:
    return f"request body exceeds {limit} bytes"


class BodyLimitMiddleware:
    """413 problem for request bodies over the route's limit."""

    def __init__(self, app: ASGIApp, limits: RequestLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    response = problem_response(400, "invalid Content-Length", slug="bad-request")
                    await response(scope, receive, send)
                    return
                if declared > limit:
                    response = problem_response(413, _too_large(limit), slug="payload-too-large")
                    await response(scope, receive, send)
                    return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside FastAPI's body read, which re-raises HTTPExceptions.
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, counting_receive, send)
