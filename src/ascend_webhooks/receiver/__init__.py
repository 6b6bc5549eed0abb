"""The receiver SDK: route verified events by type, handle each event id once.

::

    from ascend_webhooks import Event, Webhook
    from ascend_webhooks.receiver import Router

    router = Router()

    @router.on("invoice.paid")
    def invoice_paid(event: Event) -> None: ...

Framework adapters (imported only when used, so this package needs no web framework):
:mod:`ascend_webhooks.receiver.contrib.fastapi` (any Starlette app),
:mod:`~ascend_webhooks.receiver.contrib.flask`, :mod:`~ascend_webhooks.receiver.contrib.django`.
"""

from __future__ import annotations

from ._core import (
    DEFAULT_MAX_BODY_BYTES,
    MEMORY,
    ErrorHook,
    Mode,
    RawBodyUnavailableError,
    Reply,
    WebhookReceiver,
)
from .idempotency import (
    DEFAULT_DONE_TTL,
    DEFAULT_PROCESSING_TTL,
    AsyncIdempotencyStore,
    AsyncRedisIdempotencyStore,
    Claim,
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
    SQLiteIdempotencyStore,
)
from .router import AsyncHandler, Handler, Router, SyncHandler

__all__ = [
    "DEFAULT_DONE_TTL",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PROCESSING_TTL",
    "MEMORY",
    "AsyncHandler",
    "AsyncIdempotencyStore",
    "AsyncRedisIdempotencyStore",
    "Claim",
    "ErrorHook",
    "Handler",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "Mode",
    "RawBodyUnavailableError",
    "RedisIdempotencyStore",
    "Reply",
    "Router",
    "SQLiteIdempotencyStore",
    "SyncHandler",
    "WebhookReceiver",
]
