"""Route verified events to handlers by event type.

::

    router = Router()

    @router.on("invoice.paid")
    async def invoice_paid(event: Event) -> None: ...

    @router.on("payout.paid", "payout.failed")   # one handler, several types
    def payout(event: Event) -> None: ...

    @router.fallback                              # every type without a handler
    def other(event: Event) -> None: ...

Several handlers may be registered for one type: they run one after the other, in the order
they were registered, and the first one that raises stops the dispatch and the exception
propagates. That is what at-least-once delivery needs: a failure releases the event's
idempotency claim, the sender retries, and *every* handler of the type runs again, so each
handler must itself be safe to re-run (the usual rule for webhook handlers).

An event whose type has no handler goes to the fallback; the default fallback does nothing, so
the event is still acknowledged with 200 (answering anything else would only make the sender
retry an event nobody will ever handle).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..event import Event

__all__ = ["AsyncHandler", "AsyncRunner", "Handler", "Router", "SyncHandler"]

logger = logging.getLogger("ascend_webhooks.receiver")

SyncHandler = Callable[[Event], object]
AsyncHandler = Callable[[Event], Awaitable[object]]
#: A handler takes the verified :class:`Event`; it may be a plain or an ``async`` function.
Handler = SyncHandler | AsyncHandler

#: Runs an async handler's awaitable to completion from a thread without a running event loop.
AsyncRunner = Callable[[Awaitable[object]], object]

H = TypeVar("H", bound=Callable[[Event], Any])


def _ignore(event: Event) -> None:
    """Default fallback: acknowledge an event nobody handles, leaving a trace in the debug log."""
    logger.debug("no handler for event %s of type %r: acknowledged", event.id, event.type)


def _is_async(handler: Callable[..., Any]) -> bool:
    """Whether calling ``handler`` gives a coroutine (also for objects with an async __call__)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 (we want the method, not callable())
    )


class Router:
    """Maps event types to handlers; :meth:`dispatch` runs the handlers of one event."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[[Event], Any]]] = {}
        self._fallback: Callable[[Event], Any] = _ignore

    def on(self, *event_types: str) -> Callable[[H], H]:
        """Decorator: register the function as a handler of each of ``event_types``."""
        if not event_types:
            raise ValueError("on() needs at least one event type, e.g. on('invoice.paid')")
        for event_type in event_types:
            if not isinstance(event_type, str) or not event_type:
                raise ValueError(f"an event type must be a non-empty string, not {event_type!r}")

        def register(handler: H) -> H:
            for event_type in event_types:
                self.add(event_type, handler)
            return handler

        return register

    def add(self, event_type: str, handler: Callable[[Event], Any]) -> None:
        """Register ``handler`` for ``event_type`` (after any handler already registered)."""
        if not isinstance(event_type, str) or not event_type:
            raise ValueError(f"an event type must be a non-empty string, not {event_type!r}")
        if not callable(handler):
            raise TypeError(f"a handler must be callable, not {type(handler).__name__}")
        self._handlers.setdefault(event_type, []).append(handler)

    def fallback(self, handler: H) -> H:
        """Decorator: run ``handler`` for every event whose type has no handler of its own."""
        if not callable(handler):
            raise TypeError(f"a handler must be callable, not {type(handler).__name__}")
        self._fallback = handler
        return handler

    @property
    def event_types(self) -> frozenset[str]:
        """The event types that have at least one handler."""
        return frozenset(self._handlers)

    def handlers_for(self, event_type: str) -> tuple[Callable[[Event], Any], ...]:
        """The handlers :meth:`dispatch` would run for ``event_type``, fallback included."""
        return tuple(self._handlers.get(event_type, ())) or (self._fallback,)

    async def dispatch(self, event: Event) -> bool:
        """Run the event's handlers in order; True if a handler (not the fallback) matched.

        ``async`` handlers are awaited; plain ones run in a worker thread so that they never
        block the event loop. The first exception propagates.
        """
        matched = event.type in self._handlers
        for handler in self.handlers_for(event.type):
            if _is_async(handler):
                await handler(event)
            else:
                result = await asyncio.to_thread(handler, event)
                if inspect.isawaitable(result):  # e.g. a functools.partial of an async function
                    await result
        return matched

    def dispatch_sync(self, event: Event, *, async_runner: AsyncRunner | None = None) -> bool:
        """Blocking :meth:`dispatch`, for threads without a running event loop (Flask, Django).

        ``async`` handlers are run to completion by ``async_runner``; by default in a fresh
        event loop of this thread (:func:`asyncio.run`). A framework with its own way of
        running async code from sync code passes that (Django: asgiref's ``async_to_sync``).
        """
        run = async_runner or _run_to_completion
        matched = event.type in self._handlers
        for handler in self.handlers_for(event.type):
            result = handler(event)
            if inspect.isawaitable(result):
                run(result)
        return matched


def _run_to_completion(awaitable: Awaitable[object]) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the normal case
        asyncio.run(_await(awaitable))
        return
    if inspect.iscoroutine(awaitable):
        awaitable.close()  # it will never run: say so here, not in a "never awaited" warning
    raise RuntimeError(
        "dispatch_sync() met an async handler inside a running event loop: "
        "use 'await router.dispatch(event)' there"
    )


async def _await(awaitable: Awaitable[object]) -> object:
    return await awaitable
