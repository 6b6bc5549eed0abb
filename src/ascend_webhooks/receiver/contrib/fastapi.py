"""Receive Ascend webhooks in FastAPI, or in any Starlette application.

::

    from ascend_webhooks.receiver.contrib.fastapi import ascend_endpoint

    app.add_api_route("/webhooks", ascend_endpoint(secret, router), methods=["POST"],
                      include_in_schema=False)                       # FastAPI
    Route("/webhooks", ascend_endpoint(secret, router), methods=["POST"])   # Starlette

The raw body is read from ``request.stream()``, counting bytes: a body over ``max_body_bytes``
(1 MiB by default) is answered 413 at once on its ``Content-Length``, or as soon as a streamed
body passes the cap, before the signature is checked. The stream gives the body Starlette
cached, so a middleware that read the body (or its JSON) first does not break verification;
such a body is still held to the cap. In the default
``mode="background"`` the handlers run as a Starlette background task, after the 200 has been
sent; ``mode="inline"`` runs them first and answers 500 if one fails (the sender retries).
Only Starlette is imported here; :func:`ascend_api_router` imports FastAPI when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Protocol, cast

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...signature import Webhook
from .._core import (
    DEFAULT_MAX_BODY_BYTES,
    MEMORY,
    ErrorHook,
    Mode,
    Reply,
    StoreOption,
    WebhookReceiver,
    announces_more_than,
    body_limit,
    body_too_large,
)
from ..router import Router

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = [
    "StarletteEndpoint",
    "ascend_api_router",
    "ascend_endpoint",
    "ascend_route",
    "read_body",
]


class StarletteEndpoint(Protocol):
    """The endpoint function :func:`ascend_endpoint` returns; ``.receiver`` is its engine."""

    receiver: WebhookReceiver

    async def __call__(self, request: Request) -> Response: ...


def ascend_endpoint(
    webhook: Webhook | str | Sequence[str],
    router: Router,
    *,
    store: StoreOption = MEMORY,
    mode: Mode = "background",
    on_error: ErrorHook | None = None,
    max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
) -> StarletteEndpoint:
    """An ``async def endpoint(request)`` that verifies, de-duplicates and dispatches.

    ``webhook`` is a :class:`Webhook` or the secret(s): pass both during a key rotation.
    ``store`` is an async or blocking idempotency store (blocking ones run in a thread),
    ``MEMORY`` (the default) or ``None`` to run every delivery. A body over
    ``max_body_bytes`` is answered 413 unread; ``None`` turns the cap off.
    """
    limit = body_limit(max_body_bytes)
    receiver = WebhookReceiver(webhook, router, store=store, mode=mode, on_error=on_error)

    async def ascend_webhook(request: Request) -> Response:
        if limit is None:
            body = await request.body()
        elif (capped := await read_body(request, limit)) is not None:
            body = capped
        else:
            return to_response(body_too_large(limit))
        return to_response(await receiver.handle(body, request.headers))

    endpoint = cast(StarletteEndpoint, ascend_webhook)
    endpoint.receiver = receiver
    return endpoint


def ascend_route(
    path: str, webhook: Webhook | str | Sequence[str], router: Router, **options: Any
) -> Route:
    """A Starlette ``Route`` for ``POST path``; options as for :func:`ascend_endpoint`."""
    return Route(path, ascend_endpoint(webhook, router, **options), methods=["POST"])


def ascend_api_router(
    webhook: Webhook | str | Sequence[str],
    router: Router,
    *,
    path: str = "/webhooks",
    include_in_schema: bool = False,
    **options: Any,
) -> APIRouter:
    """A FastAPI ``APIRouter`` with ``POST path``: ``app.include_router(...)`` it."""
    from fastapi import APIRouter

    api_router = APIRouter()
    api_router.add_api_route(
        path,
        ascend_endpoint(webhook, router, **options),
        methods=["POST"],
        include_in_schema=include_in_schema,
    )
    return api_router


async def read_body(request: Request, limit: int) -> bytes | None:
    """The raw body, or None as soon as it is known to be over ``limit`` bytes."""
    if announces_more_than(request.headers.get("content-length"), limit):
        return None  # refused unread
    chunks: list[bytes] = []
    size = 0
    # stream() replays a body a middleware already read, and raises as body() does if the
    # stream was consumed without being kept.
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                return None  # stop reading: the rest is never received
            chunks.append(chunk)
    return b"".join(chunks)


def to_response(reply: Reply) -> Response:
    """The Starlette response for a :class:`Reply`, with its background work attached."""
    background = BackgroundTask(reply.run_after) if reply.run_after is not None else None
    return Response(reply.body, reply.status, headers=dict(reply.headers), background=background)
