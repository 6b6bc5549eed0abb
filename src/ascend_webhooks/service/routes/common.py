"""Pieces every router uses: the route class, pagination parameters and the documented error
answers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine, Iterable
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from ...store.base import InvalidCursorError
from ..state import Services, get_services

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "PROBLEM_SCHEMA",
    "SHOWN_ONCE",
    "After",
    "JSONBodyRoute",
    "Limit",
    "Svc",
    "id_cursor",
    "json_loads_utf8",
    "problem_answers",
    "problems",
]

# The app adds ProblemOut to the OpenAPI components (see app.py): FastAPI's ``model=`` would
# document problems as ``application/json``, and they are ``application/problem+json``.
PROBLEM_SCHEMA = {"$ref": "#/components/schemas/ProblemOut"}

#: The OpenAPI ``responses`` entry of a 201 whose body carries a secret shown once: it is sent
#: with ``responses.NO_STORE``.
SHOWN_ONCE: dict[int | str, dict[str, Any]] = {
    201: {
        "headers": {
            "Cache-Control": {
                "description": "`no-store`: no cache may keep the secret",
                "schema": {"type": "string", "const": "no-store"},
            }
        }
    }
}


class _UTF8Request(Request):
    """A request whose JSON body must be UTF-8 (RFC 8259 §8.1). Starlette's ``json.loads`` of
    the bytes guesses UTF-16 and UTF-32 from the first bytes, and reads surrogates encoded in
    UTF-8, so such bodies were accepted where the API says 400."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json_loads_utf8(await self.body())
        return self._json


def json_loads_utf8(body: bytes) -> Any:
    """The JSON document of a UTF-8 body; a UTF-8 byte order mark is ignored, as RFC 8259
    allows (the publish fast path hands such a body to the route, which has always taken it).
    Anything else that is not UTF-8 is a 400 (raised as Starlette's HTTPException, the one
    error FastAPI passes on from reading a body)."""
    encoding = json.detect_encoding(body)  # from the first four bytes: no pass over the body
    if encoding not in ("utf-8", "utf-8-sig"):
        raise HTTPException(
            400, f"the body is not UTF-8 (it reads as {encoding.upper()}): send JSON in UTF-8"
        )
    try:
        text = body.decode(encoding)  # (what json.loads did, but strict on surrogates)
    except UnicodeDecodeError as error:
        detail = f"the body is not UTF-8: {error.reason} (at byte {error.start})"
        raise HTTPException(400, detail) from None
    return json.loads(text)


class JSONBodyRoute(APIRoute):
    """The class of every route: one that takes a body reads it with :class:`_UTF8Request`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def utf8_handler(request: Request) -> Response:
            return await handler(_UTF8Request(request.scope, request.receive))

        return utf8_handler


DEFAULT_LIMIT = 50
MAX_LIMIT = 200

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
After = Annotated[
    str | None,
    Query(max_length=200, description="the `next_cursor` of the previous page"),
]
Svc = Annotated[Services, Depends(get_services)]

_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing or invalid bearer token",
    403: "Needs an admin token",
    404: "Not found (or belongs to another organization)",
    409: "Conflicts with the current state",
    413: "Request or event body too large",
    415: "The body is not sent as JSON (`Content-Type: application/json`)",
    422: "Invalid input",
    503: "The database is unavailable: retry (after `Retry-After` seconds)",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these problem statuses (plus 401 and 422)."""
    return problem_answers({401, 422, *statuses})


def problem_answers(statuses: Iterable[int]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for exactly these problem statuses."""
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
        }
        for status in sorted(statuses)
    }


def id_cursor(after: str | None, prefix: str) -> str | None:
    """A cursor of a list paged by id (organizations, endpoints): the id of the last item, as
    ``ids.new_id`` makes them. Anything else was handed out by no list: 400, not a quiet
    empty page."""
    if after is not None and not re.fullmatch(prefix + r"_[0-9A-HJKMNP-TV-Z]{26}", after):
        raise InvalidCursorError(after)
    return after
