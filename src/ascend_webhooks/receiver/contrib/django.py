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

In the default ``mode="background"`` the handlers run in a thread pool after the view
returned (pass ``executor=`` to use your own); ``mode="inline"`` runs them in the request.
Handlers that use the ORM from the pool should wrap their work in ``transaction.atomic()``
and may call ``django.db.close_old_connections()`` as Django's own request cycle does.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Protocol, cast

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.http.request import RawPostDataException
from django.views.decorators.csrf import csrf_exempt

from ...signature import Webhook
from .._core import (
    MEMORY,
    ErrorHook,
    Mode,
    RawBodyUnavailableError,
    Reply,
    StoreOption,
    WebhookReceiver,
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
) -> DjangoView:
    """A ``csrf_exempt`` Django view that verifies, de-duplicates and dispatches.

    ``webhook`` is a :class:`Webhook` or the secret(s): pass both during a key rotation.
    ``store`` is a blocking idempotency store, ``MEMORY`` (the default) or ``None``.
    """
    receiver = WebhookReceiver(
        webhook, router, store=store, mode=mode, executor=executor, on_error=on_error
    )
    receiver.require_blocking_store()

    @csrf_exempt
    def ascend_webhook(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            body = request.body
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
