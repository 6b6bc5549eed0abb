"""Receive Ascend webhooks in Flask.

::

    from ascend_webhooks.receiver.contrib.flask import ascend_blueprint, ascend_view

    app.register_blueprint(ascend_blueprint(secret, router, path="/webhooks"))
    # or: app.add_url_rule("/webhooks", view_func=ascend_view(secret, router), methods=["POST"])

The raw body is ``request.get_data(cache=True)``: the same bytes ``request.get_json()`` parses,
so a ``before_request`` hook that read the JSON first is harmless. ``request.data`` and
``request.form`` are not used: they may be empty or decoded depending on the content type.
Code that read ``request.stream`` itself leaves nothing to verify; that raises
:class:`RawBodyUnavailableError` instead of a misleading 401.

A body over ``max_body_bytes`` (1 MiB by default; the app's ``MAX_CONTENT_LENGTH`` when that is
smaller) is answered 413 before the signature is checked: at once on its ``Content-Length``,
and a streamed body is read no further than one byte past the cap.

In the default ``mode="background"`` the handlers run in a thread pool after the view
returned (pass ``executor=`` to use your own); ``mode="inline"`` runs them in the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any, Protocol, cast

from flask import Blueprint, Response, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

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
    body_limit,
    body_too_large,
)
from ..router import Router

__all__ = ["FlaskView", "ascend_blueprint", "ascend_view", "read_body"]


class FlaskView(Protocol):
    """The view function :func:`ascend_view` returns; ``.receiver`` is its engine."""

    receiver: WebhookReceiver
    __name__: str

    def __call__(self) -> Response: ...


def ascend_view(
    webhook: Webhook | str | Sequence[str],
    router: Router,
    *,
    store: StoreOption = MEMORY,
    mode: Mode = "background",
    executor: Executor | None = None,
    on_error: ErrorHook | None = None,
    max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
) -> FlaskView:
    """A Flask view function that verifies, de-duplicates and dispatches (POST only).

    ``webhook`` is a :class:`Webhook` or the secret(s): pass both during a key rotation.
    ``store`` is a blocking idempotency store, ``MEMORY`` (the default) or ``None``.
    A body over ``max_body_bytes`` is answered 413 unread; ``None`` turns the cap off.
    """
    limit = body_limit(max_body_bytes)
    receiver = WebhookReceiver(
        webhook, router, store=store, mode=mode, executor=executor, on_error=on_error
    )
    receiver.require_blocking_store()

    def ascend_webhook() -> Response:
        cap = _smaller(limit, request.max_content_length)
        if cap is None:
            body = request.get_data(cache=True)
        elif (capped := read_body(cap)) is not None:
            body = capped
        else:
            return to_response(body_too_large(cap))
        if not body and request.content_length:
            raise RawBodyUnavailableError(
                "the request body was consumed before the webhook view ran (something read "
                "request.stream): read it with request.get_data(cache=True) or get_json() "
                "instead, so the raw bytes stay available for the signature check"
            )
        return to_response(receiver.handle_sync(body, request.headers))

    view = cast(FlaskView, ascend_webhook)
    view.receiver = receiver
    return view


def ascend_blueprint(
    webhook: Webhook | str | Sequence[str],
    router: Router,
    *,
    path: str = "/webhooks",
    name: str = "ascend_webhooks",
    url_prefix: str | None = None,
    **options: Any,
) -> Blueprint:
    """A blueprint with ``POST path``; options as for :func:`ascend_view`."""
    blueprint = Blueprint(name, __name__, url_prefix=url_prefix)
    view = ascend_view(webhook, router, **options)
    blueprint.add_url_rule(path, view_func=view, methods=["POST"])
    return blueprint


def read_body(limit: int) -> bytes | None:
    """The raw body (cached, as ``get_data(cache=True)``), or None if it is over ``limit``."""
    declared = request.content_length
    if declared is not None and declared > limit:
        return None  # refused unread
    if declared is None:
        # Streamed (chunked): Werkzeug ends such a read at max_content_length without telling
        # whether more followed, so the stream is held to one byte past the cap instead, which
        # tells "over" from "exactly". Set as the request's stream (a cached_property, which
        # takes an assignment), since Flask 3.0's max_content_length cannot be set per request.
        # A body a hook already read stays cached; get_data() gives that back.
        request.stream = get_input_stream(request.environ, max_content_length=limit + 1)
    try:
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:
        return None
    # Also holds a body a before_request hook read before the cap applied.
    return None if len(body) > limit else body


def _smaller(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def to_response(reply: Reply) -> Response:
    """The Flask response for a :class:`Reply`."""
    return Response(reply.body, status=reply.status, headers=dict(reply.headers))
