"""Receive Ascend webhooks in Django.

::

    # urls.py
    from ascend_webhooks.receiver.contrib.django import ascend_view

    urlpatterns = [path("webhooks/", ascend_view(settings.ASCEND_WEBHOOK_SECRETS, router))]

The view is ``csrf_exempt`` (the signature is the authentication) and accepts POST only. It
reads ``request.body``. Django can give those bytes only if nothing consumed the request
stream first: a middleware that called ``request.read()`` or parsed a multipart
``request.POST`` makes ``request.body`` raise ``RawPostDataException``; the view turns that
into :class:`RawBodyUnavailableError` with what to change, rather than a misleading 401.
(Reading ``request.body`` first, or ``request.POST`` of a JSON request, is harmless.)

A body whose ``Content-Length`` is over ``max_body_bytes`` (1 MiB by default) is answered 413
before the body is read; so is one over Django's own ``DATA_UPLOAD_MAX_MEMORY_SIZE``
(``RequestDataTooBig``). Django reads no more than ``Content-Length`` bytes, and a body
without one (chunked) as empty, so the view reads such a body itself, no further than one
byte past the smaller of the two limits, and answers 413 if it goes on: from ``wsgi.input``
when the server decoded the chunks and says so with ``wsgi.input_terminated`` (gunicorn,
mod_wsgi, Werkzeug), or from what Django's ASGI handler received. A server that sets no
``wsgi.input_terminated`` (wsgiref, ``runserver``) leaves nothing that can be read safely:
such a request is answered 411, unread.

In the default ``mode="background"`` the handlers run in a thread pool after the view
returned (pass ``executor=`` to use your own); ``mode="inline"`` runs them in the request.
Handlers that use the ORM from the pool should wrap their work in ``transaction.atomic()``
and may call ``django.db.close_old_connections()`` as Django's own request cycle does.

``async`` handlers are run with asgiref's ``async_to_sync``, as Django runs async code from
sync code, so they may ``await sync_to_async(...)`` (the ORM's way) under WSGI and ASGI alike:
such calls come back to the thread that runs the handlers. A fresh event loop in that thread
(what :meth:`Router.dispatch_sync` does by default) deadlocked under ASGI: the view holds
asgiref's one thread-sensitive thread, the very thread those calls wait for.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Sequence
from concurrent.futures import Executor
from typing import Protocol, cast

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.http.request import RawPostDataException
from django.views.decorators.csrf import csrf_exempt

from ...signature import Webhook
from .._core import (
    DEFAULT_MAX_BODY_BYTES,
    MEMORY,
    ErrorHook,
    Mode,
    RawBodyUnavailableError,
    Reply,
    StoreOption,
    WebhookReceiver,
    announces_more_than,
    body_limit,
    body_too_large,
    problem,
)
from ..router import Router

__all__ = ["DjangoView", "ascend_view"]

_READ_SIZE = 65_536


class DjangoView(Protocol):
    """The view function :func:`ascend_view` returns; ``.receiver`` is its engine."""

    receiver: WebhookReceiver

    def __call__(self, request: HttpRequest) -> HttpResponse: ...


def ascend_view(
    webhook: Webhook | str | Sequence[str],
    router: Router,
    *,
    store: StoreOption = MEMORY,
    mode: Mode = "background",
    executor: Executor | None = None,
    on_error: ErrorHook | None = None,
    max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
) -> DjangoView:
    """A ``csrf_exempt`` Django view that verifies, de-duplicates and dispatches.

    ``webhook`` is a :class:`Webhook` or the secret(s): pass both during a key rotation.
    ``store`` is a blocking idempotency store, ``MEMORY`` (the default) or ``None``.
    A body over ``max_body_bytes`` is answered 413 unread; ``None`` turns the cap off
    (Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` still applies).
    """
    limit = body_limit(max_body_bytes)
    receiver = WebhookReceiver(
        webhook,
        router,
        store=store,
        mode=mode,
        executor=executor,
        on_error=on_error,
        async_runner=_run_async,
    )
    receiver.require_blocking_store()

    @csrf_exempt
    def ascend_webhook(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        length = request.headers.get("Content-Length")
        if limit is not None and announces_more_than(length, limit):
            return to_response(body_too_large(limit))  # refused unread
        if not length and "Transfer-Encoding" in request.headers:
            # Streamed: request.body would be empty (WSGI), or held to Django's limit only.
            stream = _unannounced_body(request)
            if stream is None:
                return to_response(_length_required())  # refused unread
            cap = _smaller(limit, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
            if (streamed := read_capped(stream, cap)) is None:
                return to_response(body_too_large(cap))
            body = streamed
        else:
            try:
                body = request.body
            except RequestDataTooBig:  # over Django's own limit, also checked before reading
                return to_response(body_too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE))
            except RawPostDataException as exc:
                raise RawBodyUnavailableError(
                    "the request body was consumed before the webhook view ran (a middleware "
                    "read the request stream, or parsed request.POST of a multipart request): "
                    "read request.body there instead, which Django keeps for later readers"
                ) from exc
        return to_response(receiver.handle_sync(body, request.headers))

    view = cast(DjangoView, ascend_webhook)
    view.receiver = receiver
    return view


def _run_async(awaitable: Awaitable[object]) -> object:
    """Run an async handler's awaitable from the view's (or the pool's) thread, the Django way.

    ``async_to_sync`` runs the handler's thread-sensitive ``sync_to_async`` calls in this
    thread while it waits; under ASGI, ``asyncio.run`` here left them queued to this very
    thread for good.
    """
    return async_to_sync(_await)(awaitable)


async def _await(awaitable: Awaitable[object]) -> object:
    return await awaitable


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _unannounced_body(request: HttpRequest) -> _Readable | None:
    """Where to read a body sent without ``Content-Length``; None if it cannot be read."""
    if isinstance(request, WSGIRequest):
        # Without wsgi.input_terminated the input is the connection as it is: chunk framing,
        # and no end to read to.
        if not request.environ.get("wsgi.input_terminated"):
            return None
        return cast(_Readable, request.environ["wsgi.input"])
    return request  # ASGI: Django received the whole body; the request reads it back


def read_capped(stream: _Readable, cap: int) -> bytes | None:
    """All of ``stream``, or None once it is over ``cap`` bytes (read one byte past it)."""
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = stream.read(min(_READ_SIZE, cap + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > cap else b"".join(chunks)


def _length_required() -> Reply:
    detail = (
        "the request body came without a Content-Length and this server does not pass such a "
        "body on: send it with a Content-Length"
    )
    return problem(411, "Length Required", "length_required", detail)


def _smaller(limit: int | None, django_limit: int | None) -> int:
    """The smaller of the two limits; no cap at all (both None) is as good as unbounded."""
    caps = [cap for cap in (limit, django_limit) if cap is not None]
    return min(caps, default=sys.maxsize)


def to_response(reply: Reply) -> HttpResponse:
    """The Django response for a :class:`Reply`."""
    response = HttpResponse(reply.body, status=reply.status, content_type=reply.content_type)
    for name, value in reply.headers.items():
        if name != "Content-Type":
            response[name] = value
    return response
