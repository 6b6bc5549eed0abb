"""RFC 9457 problem details: the one shape of every error the API answers.

Every 4xx and 5xx leaves the service as ``application/problem+json`` with ``type``, ``title``,
``status`` and ``detail`` (plus ``errors`` for validation failures). Handlers here translate
FastAPI's and Starlette's own errors, the store's typed errors and our :class:`Problem` into that
shape; :class:`CatchAllMiddleware` turns anything unexpected into a logged 500 problem, because
a 5xx is a bug and must never leak a traceback or an HTML page.
"""

from __future__ import annotations

import functools
import http
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..store.base import (
    EventConflictError,
    InvalidCursorError,
    InvalidTextError,
    NotFoundError,
    StoreError,
    StoreUnavailableError,
)

__all__ = [
    "NUL_IN_PATH",
    "PROBLEM_MEDIA_TYPE",
    "CatchAllMiddleware",
    "Problem",
    "install_problem_handlers",
    "problem_response",
    "unavailable_response",
]

log = logging.getLogger("ascend_webhooks.service")

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Problem types are anchors of the API reference, so a client can look every one up.
_TYPE_BASE = "https://github.com/ascend-webhooks/ascend-webhooks/blob/main/docs/api.md#problem-"
#: The detail of the 404 for a NUL in a path, whichever layer finds it.
NUL_IN_PATH = "no resource has a NUL character in its path"


class Problem(Exception):
    """An error answer: raise it anywhere in a route; it becomes a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title
        self.headers = dict(headers or {})
        self.errors = errors


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
) -> Response:
    """The ``application/problem+json`` response for one error."""
    body: dict[str, Any] = {
        "type": _TYPE_BASE + slug if slug else "about:blank",
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = list(errors)
    return Response(
        orjson.dumps(body, default=str),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def _from_problem(exc: Problem) -> Response:
    return problem_response(
        exc.status,
        exc.detail,
        slug=exc.slug,
        title=exc.title,
        headers=exc.headers,
        errors=exc.errors,
    )


async def _problem_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return _from_problem(exc)


_HTTP_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
}


async def _http_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such route"
    headers = exc.headers
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        headers = {**(headers or {}), "Allow": allowed}
    return problem_response(
        exc.status_code,
        detail,
        slug=_HTTP_SLUGS.get(exc.status_code),
        headers=headers,
    )


def _allowed_methods(request: Request) -> str | None:
    """Every method the request's path answers, by the OpenAPI document. Each method of a
    path is a route of its own, and Starlette's 405 names those of the first route that
    matched the path only; RFC 9110 wants them all in ``Allow``."""
    path = request.scope["path"]
    found: dict[str, list[str]] = {}  # the operations of each matching path
    for template, operations in request.app.openapi().get("paths", {}).items():
        if _path_pattern(template).fullmatch(path):
            found[template] = [method.upper() for method in operations]
    # The most literal paths only: `/events/batch` is its own resource, not an event's id.
    fewest = min((template.count("{") for template in found), default=0)
    methods = {m for t, ms in found.items() if t.count("{") == fewest for m in ms}
    return ", ".join(sorted(methods)) or None  # (no HEAD: FastAPI's routes do not answer it)


@functools.cache
def _path_pattern(template: str) -> re.Pattern[str]:
    """``/v1/organizations/{org}`` as a pattern of the paths it stands for."""
    literal = re.split(r"\{[^/{}]+\}", template)
    return re.compile("[^/]+".join(re.escape(part) for part in literal))


def _clean_error(error: Mapping[str, Any]) -> dict[str, Any]:
    # Echo where and why, never the offending input: it may be large or hold secrets.
    return {
        "loc": [str(part) for part in error.get("loc", ())],
        "msg": str(error.get("msg", "invalid")),
        "type": str(error.get("type", "value_error")),
    }


def _unparsable_body(errors: Sequence[Any]) -> str | None:
    """The detail for a body that is not JSON, if that is what ``errors`` report: FastAPI
    reports its parser's failure as a validation error (``json_invalid`` at ``("body",
    offset)``), but nothing was there to validate, and a body that is not UTF-8 is a 400
    before it is parsed (``routes.common.JSONBodyRoute``). (A field typed ``Json`` reports
    ``json_invalid`` at its name.)"""
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if (
            error.get("type") == "json_invalid"
            and len(loc) == 2
            and loc[0] == "body"
            and isinstance(loc[1], int)
        ):
            reason = error.get("ctx", {}).get("error", "invalid JSON")
            return f"the body is not JSON: {reason} (at character {loc[1]})"
    return None


def _not_json(content_type: str | None) -> bool:
    """Whether a request said its body is something else than JSON (or said nothing)."""
    media = (content_type or "").partition(";")[0].strip().lower()
    return not (
        media == "application/json"
        or (media.startswith("application/") and media.endswith("+json"))
    )


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    unparsable = _unparsable_body(exc.errors())
    if unparsable is not None:
        return problem_response(400, unparsable, slug="bad-request")
    content_type = request.headers.get("content-type")
    if _not_json(content_type) and any(e.get("loc", ())[:1] == ("body",) for e in exc.errors()):
        # FastAPI reads a body of another type as bytes, and the model then reports "Input
        # should be a valid dictionary": say what the caller has to change instead.
        said = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        detail = f"the body must be JSON, sent with Content-Type: application/json ({said})"
        return problem_response(415, detail, slug="unsupported-media-type")
    errors = [_clean_error(error) for error in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"]) or "request"
    detail = f"{where}: {first['msg']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return problem_response(422, detail, slug="validation-error", errors=errors)


def unavailable_response(exc: StoreUnavailableError) -> Response:
    """The answer to a call the database could not take (or may have taken): retry it."""
    log.warning("database unavailable: %s", exc)
    return problem_response(
        503,
        "the database is unavailable; retry shortly",
        slug="unavailable",
        headers={"Retry-After": "1"},
    )


async def _store_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError)
    if isinstance(exc, NotFoundError):
        return problem_response(404, str(exc) or "not found", slug="not-found")
    if isinstance(exc, EventConflictError):
        return problem_response(409, str(exc), slug="event-conflict")
    if isinstance(exc, InvalidCursorError):
        return problem_response(400, str(exc) or "invalid cursor", slug="invalid-cursor")
    if isinstance(exc, InvalidTextError):
        return problem_response(422, str(exc), slug="validation-error")
    if isinstance(exc, StoreUnavailableError):
        return unavailable_response(exc)
    return problem_response(409, str(exc) or "conflict", slug="conflict")


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` a problem document."""
    app.add_exception_handler(Problem, _problem_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StoreError, _store_handler)


class CatchAllMiddleware:
    """Answer an unexpected exception with a logged 500 problem instead of a traceback.

    Starlette's own ``ServerErrorMiddleware`` re-raises after answering, which makes the server
    log the traceback a second time; this one logs once and keeps the connection usable.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = problem_response(
                500, "an internal error occurred; it has been logged", slug="internal-error"
            )
            await response(scope, receive, send)
