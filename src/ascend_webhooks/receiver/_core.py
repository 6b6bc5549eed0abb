"""The framework-free heart of every adapter: raw body + headers in, HTTP reply out.

:class:`WebhookReceiver` does, for one request: verify (401 / 400 problem documents), claim
the event id in the idempotency store (a duplicate is acknowledged with 200 and runs nothing),
then either acknowledge at once and run the handlers afterwards (``mode="background"``, the
default: a slow handler must not make the sender time out) or run them first and answer 200
only if they succeeded (``mode="inline"``).

Status codes and why:

- 200: verified, and handled, accepted for handling, or a duplicate of a handled event.
- 401: the signature does not verify (missing, malformed, stale or wrong): never retried to
  success, but it must not look like a success either.
- 400: signed correctly but not an event.
- 413: the body is larger than the adapter's ``max_body_bytes``; refused before the signature
  is checked, so nobody can make the receiver buffer an arbitrarily large body.
- 409: the same event is being handled right now by another delivery; answering 200 could
  lose it if that handling fails, so the sender is asked to come back later.
- 500: ``mode="inline"`` and a handler raised; the claim is released so the retry re-runs it.
- 503: the idempotency store is unreachable, or answered a claim with neither a
  :class:`Claim` nor True; nothing ran, the sender retries.

The framework adapters in :mod:`ascend_webhooks.receiver.contrib` only move bytes between
their request/response objects and this class; another framework needs the same few lines.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Literal, cast

from ..errors import InvalidPayloadError, SignatureVerificationError
from ..event import Event
from ..signature import HeadersLike, Webhook
from ._claims import AsyncIdempotencyStore, Claim, IdempotencyStore
from .idempotency import MemoryIdempotencyStore
from .router import AsyncRunner, Router

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MEMORY",
    "ErrorHook",
    "Mode",
    "RawBodyUnavailableError",
    "Reply",
    "StoreOption",
    "WebhookReceiver",
]

logger = logging.getLogger("ascend_webhooks.receiver")

Mode = Literal["background", "inline"]
#: Called with the event and the exception when a handler fails (the default logs it).
ErrorHook = Callable[[Event, BaseException], None]
Headers = Mapping[str, str] | HeadersLike


class _Memory:
    """The default store: a fresh :class:`MemoryIdempotencyStore` per receiver."""

    def __repr__(self) -> str:
        return "MEMORY"


#: ``store=MEMORY`` (the default): de-duplicate in this process's memory.
MEMORY: Final = _Memory()
StoreOption = IdempotencyStore | AsyncIdempotencyStore | _Memory | None

#: The adapters' default ``max_body_bytes``: 1 MiB, four times the sender's default largest
#: event (``ASCEND_WEBHOOKS_MAX_PAYLOAD_BYTES=262144``), so no legitimate event is refused.
DEFAULT_MAX_BODY_BYTES: Final = 1_048_576

_PROBLEM = "application/problem+json"
_JSON = "application/json"


class RawBodyUnavailableError(RuntimeError):
    """The request body was consumed before the webhook view could read the raw bytes.

    A configuration mistake (typically a middleware that read the request stream), not a bad
    request: the signature can only be checked against the exact bytes that were sent.
    """


@dataclass(frozen=True, slots=True)
class Reply:
    """The HTTP answer to send: status, body bytes and headers (Content-Type included)."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    #: The verified event, when there is one.
    event: Event | None = None
    #: Async path, ``mode="background"``: run this after the response has been sent.
    run_after: Callable[[], Awaitable[object]] | None = field(default=None, repr=False)

    @property
    def content_type(self) -> str:
        """The body's media type."""
        return self.headers["Content-Type"]


def problem(
    status: int,
    title: str,
    code: str,
    detail: str,
    event: Event | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """An RFC 9457 problem document; ``code`` is a stable, machine-readable reason."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "code": code}
    return Reply(status, _dumps(body), {"Content-Type": _PROBLEM, **(headers or {})}, event)


def body_limit(max_body_bytes: int | None) -> int | None:
    """Check an adapter's ``max_body_bytes``: a positive number of bytes, or None for no cap."""
    if max_body_bytes is None:
        return None
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
        raise TypeError(f"max_body_bytes must be an int or None, not {max_body_bytes!r}")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive, not {max_body_bytes}")
    return max_body_bytes


def announces_more_than(content_length: str | None, limit: int) -> bool:
    """Whether a ``Content-Length`` header value announces a body over ``limit`` bytes."""
    value = (content_length or "").strip()
    return value.isascii() and value.isdigit() and int(value) > limit


def body_too_large(limit: int) -> Reply:
    """The 413 for a body over ``limit`` bytes; the body was not read (or not to its end)."""
    detail = f"the request body is larger than the {limit} bytes this receiver accepts"
    return problem(413, "Content Too Large", "body_too_large", detail)


def _ack(event: Event, status: str) -> Reply:
    body = _dumps({"received": True, "id": event.id, "status": status})
    return Reply(200, body, {"Content-Type": _JSON}, event)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


# The sender keeps its own retry schedule; Retry-After is a hint for other clients and people.
_RETRY = {"Retry-After": "30"}


def _in_progress(event: Event) -> Reply:
    detail = "this event is being handled by another delivery; retry later"
    return problem(409, "Conflict", "event_in_progress", detail, event, _RETRY)


def _store_unavailable(event: Event) -> Reply:
    detail = "the idempotency store is unavailable; retry later"
    return problem(503, "Service Unavailable", "store_unavailable", detail, event, _RETRY)


def _shutting_down(event: Event) -> Reply:
    detail = "the receiver is shutting down; retry later"
    return problem(503, "Service Unavailable", "shutting_down", detail, event, _RETRY)


def _handler_failed(event: Event) -> Reply:
    detail = "a handler failed; retry later"
    return problem(500, "Internal Server Error", "handler_failed", detail, event)


class WebhookReceiver:
    """Verify, de-duplicate and dispatch one webhook request; see the module docs."""

    def __init__(
        self,
        webhook: Webhook | str | Sequence[str],
        router: Router,
        *,
        store: StoreOption = MEMORY,
        mode: Mode = "background",
        executor: Executor | None = None,
        on_error: ErrorHook | None = None,
        async_runner: AsyncRunner | None = None,
    ) -> None:
        # A secret, or a list of them during key rotation, is as good as a Webhook.
        self.webhook = webhook if isinstance(webhook, Webhook) else Webhook(webhook)
        if not isinstance(router, Router):
            raise TypeError(f"router must be a Router, not {type(router).__name__}")
        if mode not in ("background", "inline"):
            raise ValueError(f'mode must be "background" or "inline", not {mode!r}')
        self.router = router
        self.mode: Mode = mode
        self.store: IdempotencyStore | AsyncIdempotencyStore | None = (
            MemoryIdempotencyStore() if isinstance(store, _Memory) else store
        )
        self._store_is_async = self.store is not None and inspect.iscoroutinefunction(
            self.store.claim
        )
        self._executor = executor
        self._owns_executor = False
        self._executor_lock = threading.Lock()
        self._on_error = on_error or _log_failure
        # How the blocking path runs async handlers (see Router.dispatch_sync).
        self._async_runner = async_runner

    # -- the blocking path (WSGI: Flask, Django) -------------------------------------------

    def handle_sync(self, body: bytes, headers: Headers) -> Reply:
        """Answer one request; in background mode the handlers go to a thread pool."""
        event = self._authenticate(body, headers)
        if isinstance(event, Reply):
            return event
        self.require_blocking_store()
        store = cast(IdempotencyStore | None, self.store)
        try:
            claim = Claim.ACQUIRED if store is None else store.claim(event.id)
        except Exception:
            logger.exception("idempotency store failed to claim event %s", event.id)
            return _store_unavailable(event)
        if (refused := _unless_acquired(event, claim)) is not None:
            return refused
        if self.mode == "background":
            try:
                self._pool().submit(self._run_sync, event)
            except RuntimeError:  # the pool was shut down: the process is stopping
                if store is not None:
                    _quietly(store.release, event.id, "release")
                return _shutting_down(event)
            return _ack(event, "accepted")
        if self._run_sync(event):
            return _ack(event, "processed")
        return _handler_failed(event)

    def _run_sync(self, event: Event) -> bool:
        store = cast(IdempotencyStore | None, self.store)
        try:
            self.router.dispatch_sync(event, async_runner=self._async_runner)
        except BaseException as exc:
            if store is not None:
                _quietly(store.release, event.id, "release")
            if not isinstance(exc, Exception):
                raise
            self._report(event, exc)
            return False
        if store is not None:
            _quietly(store.complete, event.id, "complete")
        return True

    def _pool(self) -> Executor:
        with self._executor_lock:  # two first requests at once must not make two pools
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=4, thread_name_prefix="ascend-webhooks"
                )
                self._owns_executor = True
            return self._executor

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the thread pool this receiver created (handlers already queued still run)."""
        with self._executor_lock:
            executor, owned = self._executor, self._owns_executor
            if owned:
                self._executor, self._owns_executor = None, False
        if owned and executor is not None:
            executor.shutdown(wait=wait)

    def require_blocking_store(self) -> None:
        """Raise TypeError now if the store is async (the blocking path cannot await it)."""
        if self._store_is_async:
            raise TypeError(
                "this adapter runs in threads and needs a blocking idempotency store: "
                "use RedisIdempotencyStore rather than AsyncRedisIdempotencyStore"
            )

    # -- the async path (ASGI: Starlette, FastAPI) -----------------------------------------

    async def handle(self, body: bytes, headers: Headers) -> Reply:
        """Answer one request; in background mode the reply carries ``run_after``."""
        event = self._authenticate(body, headers)
        if isinstance(event, Reply):
            return event
        try:
            claim = await self._store_call("claim", event.id)
        except Exception:
            logger.exception("idempotency store failed to claim event %s", event.id)
            return _store_unavailable(event)
        if (refused := _unless_acquired(event, claim)) is not None:
            return refused
        if self.mode == "background":
            accepted = _ack(event, "accepted")
            return Reply(200, accepted.body, accepted.headers, event, partial(self._run, event))
        if await self._run(event):
            return _ack(event, "processed")
        return _handler_failed(event)

    async def _run(self, event: Event) -> bool:
        try:
            await self.router.dispatch(event)
        except BaseException as exc:
            # Also on cancellation; should this await be cancelled too, the lease runs out.
            try:
                await self._store_call("release", event.id)
            except Exception:
                logger.exception("idempotency store failed to release event %s", event.id)
            if not isinstance(exc, Exception):
                raise
            self._report(event, exc)
            return False
        try:
            await self._store_call("complete", event.id)
        except Exception:
            logger.exception("idempotency store failed to complete event %s", event.id)
        return True

    async def _store_call(self, method: str, event_id: str) -> Any:
        if self.store is None:
            return Claim.ACQUIRED if method == "claim" else None
        call = getattr(self.store, method)
        if self._store_is_async:
            return await call(event_id)
        # A blocking store (SQLite, redis.Redis) must not stall the event loop.
        return await asyncio.to_thread(call, event_id)

    # -- shared ------------------------------------------------------------------------------

    def _authenticate(self, body: bytes, headers: Headers) -> Event | Reply:
        try:
            return self.webhook.verify(body, headers)
        except SignatureVerificationError as exc:
            return problem(401, "Unauthorized", "invalid_signature", str(exc))
        except InvalidPayloadError as exc:
            return problem(400, "Bad Request", "invalid_payload", str(exc))

    def _report(self, event: Event, exc: Exception) -> None:
        try:
            self._on_error(event, exc)
        except Exception:
            logger.exception("the on_error hook failed for event %s", event.id)


def _unless_acquired(event: Event, claim: object) -> Reply | None:
    """The reply for a claim that does not make the event ours; None if it does."""
    if claim is Claim.ACQUIRED or claim is True:  # True: a store written as "did I get it?"
        return None
    if claim is Claim.DONE:
        return _ack(event, "duplicate")
    if claim is Claim.IN_PROGRESS:
        return _in_progress(event)
    # A custom store answering False, None or anything else may mean "someone has it": running
    # the handlers then could run a duplicate, so it counts as a store failure instead.
    logger.error(
        "idempotency store answered the claim of event %s with %r, not a Claim", event.id, claim
    )
    return _store_unavailable(event)


def _log_failure(event: Event, exc: BaseException) -> None:
    logger.error("handler failed for event %s of type %r", event.id, event.type, exc_info=exc)


def _quietly(call: Callable[[str], None], event_id: str, what: str) -> None:
    try:
        call(event_id)
    except Exception:
        logger.exception("idempotency store failed to %s event %s", what, event_id)
