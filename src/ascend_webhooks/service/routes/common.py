"""Pieces every router uses: pagination parameters and the documented error answers."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, Query

from ...store.base import InvalidCursorError
from ..state import Services, get_services

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "PROBLEM_SCHEMA",
    "SHOWN_ONCE",
    "After",
    "Limit",
    "Svc",
    "id_cursor",
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
