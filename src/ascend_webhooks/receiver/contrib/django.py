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
without one (chunked) as empty, so the check on the header bounds what the view reads.

In the default ``mode="background"`` the handlers run in a thread pool after the view
returned (pass ``executor=`` to use your own); ``mode="inline"`` runs them in the request.
Handlers that use the ORM from the pool should wrap their work in ``transaction.atomic()``
and may call ``django.db.close_old_connections()`` as Django's own request cycle does.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Protocol, cast

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
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
)
from ..router import Router

__all__ = ["DjangoView", "ascend_view"]


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
        webhook, router, store=store, mode=mode, executor=executor, on_error=on_error
    )
    receiver.require_blocking_store()

    @csrf_exempt
    def ascend_webhook(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        length = request.headers.get("Content-Length")
        if limit is not None and announces_more_than(length, limit):
            return to_response(body_too_large(limit))  # refused unread
        try:
            body = request.body
        except RequestDataTooBig:  # over Django's own limit, also checked before reading
            return to_response(body_too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE))
        except RawPostDataException as exc:
            raise RawBodyUnavailableError(
                "the request body was consumed before the webhook view ran (a middleware read "
                "the request stream, or parsed request.POST of a multipart request): read "
                "request.body there instead, which Django keeps for later readers"
            ) from exc
        return to_response(receiver.handle_sync(body, request.headers))

    view = cast(DjangoView, ascend_webhook)
    view.receiver = receiver
    return view


def to_response(reply: Reply) -> HttpResponse:
    """The Django response for a :class:`Reply`."""
    response = HttpResponse(reply.body, status=reply.status, content_type=reply.content_type)
    for name, value in reply.headers.items():
        if name != "Content-Type":
            response[name] = value
    return response
