"""Events: publish (one or a batch), list, get.

The body sent to receivers is built once, here, as compact UTF-8 JSON with exactly the keys
``id``, ``type`` and ``data``, and stored; every attempt sends those bytes. Idempotency is by
event id: the content hash covers (type, data, ordering_key) in a canonical form (sorted keys),
so re-sending the same content is answered 200 with the original, different content 409.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Annotated, Any
from urllib.parse import unquote

import orjson
from fastapi import APIRouter, Header, Query

from ...ids import new_id
from ...metrics import EVENTS_PUBLISHED
from ...store.models import NewEvent, PublishResult
from ..auth import OrgScope
from ..problems import NUL_IN_PATH, Problem
from ..responses import JSONResponse
from ..schemas import (
    EventAccepted,
    EventBatch,
    EventBatchAccepted,
    EventBatchResult,
    EventCreate,
    EventList,
    EventOut,
    EventPublished,
    event_view,
    page_view,
)
from ..state import Services
from .common import DEFAULT_LIMIT, After, JSONBodyRoute, Limit, Svc, problems

__all__ = [
    "MINIMAL_APPLIED",
    "build_event",
    "prefers_minimal",
    "publish_many",
    "published_view",
    "router",
    "wire_body",
]

router = APIRouter(tags=["events"], route_class=JSONBodyRoute)

_dumps = orjson.dumps
_SORT_KEYS = orjson.OPT_SORT_KEYS
_sha256 = hashlib.sha256


#: The header an answer to ``Prefer: return=minimal`` carries (RFC 7240).
MINIMAL_APPLIED = ("Preference-Applied", "return=minimal")

Prefer = Annotated[
    list[str] | None,
    Header(
        description="`return=minimal` (RFC 7240): each event is answered with its `id` and"
        " `created` only, not the stored event; the answer says `Preference-Applied:"
        " return=minimal`. For bulk publishing, whose full answer is as large as the request."
    ),
]


def prefers_minimal(values: Iterable[str]) -> bool:
    """Whether ``Prefer`` header values (RFC 7240) ask for ``return=minimal``."""
    for value in values:
        for preference in value.split(","):
            name, _, wanted = preference.split(";", 1)[0].partition("=")
            if name.strip().lower() == "return" and wanted.strip().strip('"') == "minimal":
                return True
    return False


def _invalid_data(where: str, reason: str) -> Problem:
    return Problem(
        422,
        f"{where}: {reason}",
        slug="validation-error",
        errors=[{"loc": where.split("."), "msg": reason, "type": "value_error"}],
    )


def _check_finite(data: Any, where: str) -> None:
    """Reject NaN and ±Infinity, which Python's JSON parser lets through but JSON forbids."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                raise _invalid_data(where, "NaN and Infinity are not JSON numbers")
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def wire_body(
    event_id: str, event_type: str, data: Any, ordering_key: str | None
) -> tuple[bytes, bytes]:
    """An event's stored body (the compact JSON ``{"id","type","data"}`` sent on every attempt)
    and its content hash (SHA-256 of the canonical ``type``, ``data``, ``ordering_key``, keys
    sorted). The route and the publish front both build events with this, so that their bodies
    and hashes are the same bytes. Raises ``orjson.JSONEncodeError`` for what JSON cannot hold
    (integers beyond 64 bits, lone surrogates, nesting deeper than 254)."""
    body = _dumps({"id": event_id, "type": event_type, "data": data})
    canonical = _dumps(
        {"type": event_type, "data": data, "ordering_key": ordering_key}, option=_SORT_KEYS
    )
    return body, _sha256(canonical).digest()


def build_event(item: EventCreate, max_payload_bytes: int, where: str = "body") -> NewEvent:
    """The event as stored: its wire body and content hash. 413/422 problems on bad data."""
    _check_finite(item.data, f"{where}.data")
    event_id = item.id if item.id is not None else new_id("evt")
    try:
        body, content_hash = wire_body(event_id, item.type, item.data, item.ordering_key)
    except orjson.JSONEncodeError as exc:  # integers beyond 64 bits, lone surrogates, depth
        raise _invalid_data(f"{where}.data", str(exc)) from None
    if len(body) > max_payload_bytes:
        raise Problem(
            413,
            f"{where}: the event body is {len(body)} bytes; the limit is {max_payload_bytes}",
            slug="payload-too-large",
        )
    return NewEvent(
        id=event_id,
        type=item.type,
        body=body,
        content_hash=content_hash,
        ordering_key=item.ordering_key,
    )


def published_view(result: PublishResult, data: Any = None) -> dict[str, Any]:
    """The answer for one published event. ``data``, when given, is the event's data as just
    validated, saving a parse of the stored body (only for events this call created)."""
    view = event_view(result.event, data)
    view["created"] = result.created
    return view


@router.post(
    "/organizations/{org}/events",
    status_code=202,
    response_model=EventPublished | EventAccepted,
    responses={
        200: {
            "model": EventPublished | EventAccepted,
            "description": "Identical event already stored",
        },
        **problems(404, 409, 413),
    },
    summary="Publish an event (202 once durably stored)",
)
async def publish_event(
    org: OrgScope, body: EventCreate, services: Svc, prefer: Prefer = None
) -> JSONResponse:
    event = build_event(body, services.settings.max_payload_bytes)
    (result,) = await services.store.publish(org, [event])
    if result.created:
        EVENTS_PUBLISHED.inc()
    status = 202 if result.created else 200
    if prefers_minimal(prefer or ()):
        minimal = {"id": result.event.id, "created": result.created}
        return JSONResponse(minimal, status_code=status, headers=dict([MINIMAL_APPLIED]))
    return JSONResponse(published_view(result), status_code=status)


@router.post(
    "/organizations/{org}/events/batch",
    status_code=202,
    response_model=EventBatchResult | EventBatchAccepted,
    responses={
        200: {
            "model": EventBatchResult | EventBatchAccepted,
            "description": "Every event already stored",
        },
        **problems(404, 409, 413),
    },
    summary="Publish up to 1,000 events at once (all or nothing)",
)
async def publish_batch(
    org: OrgScope, body: EventBatch, services: Svc, prefer: Prefer = None
) -> JSONResponse:
    minimal = prefers_minimal(prefer or ())
    status, answer = await publish_many(services, org, body.events, minimal=minimal)
    headers = dict([MINIMAL_APPLIED]) if minimal else None
    return JSONResponse(answer, status_code=status, headers=headers)


async def publish_many(
    services: Services, org: str, items: Sequence[EventCreate], *, minimal: bool = False
) -> tuple[int, dict[str, Any]]:
    """Publish a batch in one store call: (202 or 200, the answer). Problems on bad events.
    ``minimal``: each event answered with its ``id`` and ``created`` only."""
    limit = services.settings.max_payload_bytes
    built = [build_event(item, limit, f"body.events.{n}") for n, item in enumerate(items)]
    unique: dict[str, NewEvent] = {}
    for event in built:
        seen = unique.setdefault(event.id, event)
        if seen.content_hash != event.content_hash:
            raise Problem(
                409,
                f"event {event.id!r} appears twice in the batch with different content",
                slug="event-conflict",
            )
    results = await services.store.publish(org, list(unique.values()))
    by_id = {result.event.id: result for result in results}
    views: list[dict[str, Any]] = []
    first_seen: set[str] = set()
    for event, item in zip(built, items, strict=True):
        result = by_id[event.id]
        if minimal:
            view = {"id": event.id, "created": result.created and event.id not in first_seen}
            first_seen.add(event.id)
        elif event.id in first_seen:  # a repeat within the batch created nothing itself
            view = published_view(result)
            view["created"] = False
        else:  # the first of its id: if it created the event, its data is what was stored
            view = published_view(result, item.data if result.created else None)
            first_seen.add(event.id)
        views.append(view)
    created = sum(1 for result in results if result.created)
    if created:
        EVENTS_PUBLISHED.inc(created)
    return (202 if created else 200), {"data": views}


@router.get(
    "/organizations/{org}/events",
    response_model=EventList,
    responses=problems(404),
    summary="List events, newest first, with their deliveries",
)
async def list_events(
    org: OrgScope,
    services: Svc,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
    type: Annotated[  # the public name of the filter is `type`
        str | None, Query(max_length=200, description="only events of this type")
    ] = None,
) -> JSONResponse:
    page = await services.store.list_events(
        org,
        limit=limit,
        after=services.box.open_cursor(org, after, listing="events"),
        event_type=type,
    )
    cursor = services.box.seal_cursor(org, page.next_cursor, listing="events")
    return JSONResponse(page_view([event_view(e) for e in page.items], cursor))


@router.get(
    "/organizations/{org}/events/{event}",
    response_model=EventOut,
    responses=problems(404),
    summary="Get an event with its deliveries",
)
async def get_event(org: OrgScope, event: str, services: Svc) -> JSONResponse:
    return JSONResponse(event_view(await services.store.get_event(org, _event_path_id(event))))


def _event_path_id(segment: str) -> str:
    """The event id a path segment names, once the server decoded the URL. Ids never hold "%",
    so one left is a second level of percent-encoding, decoded here: the way to name the ids
    "." and ".." (``%252E``, ``%252E%252E``), path segments that browsers, and any client
    parsing URLs as they do, resolve away even when written ``%2E``.

    A NUL decoded here (``%2500``) is 404 as one in the path is: the app's check of the path
    saw only ``%00``, and PostgreSQL, whose text cannot hold a NUL, refused it (422)."""
    if "%" not in segment:
        return segment
    event_id = unquote(segment)
    if "\0" in event_id:
        raise Problem(404, NUL_IN_PATH, slug="not-found")
    return event_id
