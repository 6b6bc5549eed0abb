"""The API's request and response shapes (pydantic), and the views that build responses.

Request models validate input (FastAPI answers 422 problems from them). Response models describe
the answers in ``/openapi.json``; the routes build the answers as plain dicts with the ``*_view``
functions below and render them with orjson, and the test-suite validates every answer against
these models (``extra="forbid"``) so that the two cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..event import EVENT_ID_PATTERN, EVENT_TYPE_PATTERN
from ..store.models import (
    ApiToken,
    Attempt,
    Delivery,
    DeliveryStatus,
    Endpoint,
    Event,
    Organization,
    WebhookKey,
)

__all__ = [
    "EVENT_ID_PATTERN",
    "EVENT_TYPE_PATTERN",
    "MAX_BATCH_EVENTS",
    "MAX_ORDERING_KEY",
    "AttemptOut",
    "DeliveryList",
    "DeliveryListItem",
    "DeliveryOut",
    "DeliverySummary",
    "EndpointCreate",
    "EndpointList",
    "EndpointOut",
    "EndpointUpdate",
    "EventBatch",
    "EventBatchResult",
    "EventCreate",
    "EventList",
    "EventOut",
    "EventPublished",
    "Health",
    "KeyCreated",
    "KeyList",
    "KeyOut",
    "OrganizationCreate",
    "OrganizationList",
    "OrganizationOut",
    "ProblemOut",
    "TokenCreate",
    "TokenCreated",
    "TokenList",
    "TokenOut",
    "attempt_view",
    "delivery_list_item_view",
    "delivery_view",
    "endpoint_view",
    "event_view",
    "key_view",
    "organization_view",
    "page_view",
    "token_summary_view",
    "token_view",
]

MAX_BATCH_EVENTS = 1000

MAX_ORDERING_KEY = 255
EventId = Annotated[str, StringConstraints(pattern=f"^{EVENT_ID_PATTERN}$")]
EventType = Annotated[str, StringConstraints(pattern=f"^{EVENT_TYPE_PATTERN}$")]
# No NUL characters in stored text: PostgreSQL's text cannot hold them (SQLite's can), so both
# stores refuse them alike, here, with a 422.
NO_NUL = r"^[^\x00]*$"
OrderingKey = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ORDERING_KEY, pattern=NO_NUL)
]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=NO_NUL)
]
Url = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2048, pattern=NO_NUL)
]
Description = Annotated[str, StringConstraints(max_length=1000, pattern=NO_NUL)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests ----------------------------------------------------------------------------------


class OrganizationCreate(_Input):
    name: Name


class TokenCreate(_Input):
    name: Name | None = None


class EndpointCreate(_Input):
    url: Url = Field(description="https:// URL (http:// only if the operator allows it)")
    event_types: Annotated[list[EventType], Field(min_length=1, max_length=1000)] | None = Field(
        default=None, description="event types delivered here; null for every type"
    )
    description: Description | None = None
    enabled: bool = True


class EndpointUpdate(_Input):
    """Only the fields present change; ``event_types: null`` means every type."""

    url: Url | None = None
    event_types: Annotated[list[EventType], Field(min_length=1, max_length=1000)] | None = None
    description: Description | None = None
    enabled: bool | None = None


class EventCreate(_Input):
    type: EventType
    data: dict[str, Any] = Field(description="any JSON object")
    id: EventId | None = Field(
        default=None, description="your idempotency key; generated (evt_…) when absent"
    )
    ordering_key: OrderingKey | None = Field(
        default=None,
        description="events with the same key reach each endpoint one at a time, in order",
    )


class EventBatch(_Input):
    events: Annotated[list[EventCreate], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


# -- responses ---------------------------------------------------------------------------------


class ProblemOut(_Output):
    """An RFC 9457 problem document (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


class Health(_Output):
    status: str


class OrganizationOut(_Output):
    id: str
    name: str
    created_at: datetime


class OrganizationList(_Output):
    data: list[OrganizationOut]
    next_cursor: str | None


class TokenCreated(_Output):
    id: str
    token: str = Field(description="shown once; only its hash is stored")
    organization_id: str | None = Field(description="null for an admin token")
    name: str | None
    created_at: datetime


class TokenOut(_Output):
    """A stored token as listed: never the token itself, nor its hash."""

    id: str
    name: str | None
    created_at: datetime


class TokenList(_Output):
    data: list[TokenOut]


class KeyOut(_Output):
    id: str
    organization_id: str
    active: bool = Field(description="whether this key signs deliveries now")
    created_at: datetime
    activated_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    secret: str = Field(description="shown once; stored encrypted")


class KeyList(_Output):
    data: list[KeyOut]
    next_cursor: str | None


class EndpointOut(_Output):
    id: str
    organization_id: str
    url: str
    event_types: list[str] | None
    description: str | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


class EndpointList(_Output):
    data: list[EndpointOut]
    next_cursor: str | None


class DeliverySummary(_Output):
    id: str
    endpoint_id: str
    status: DeliveryStatus


class EventOut(_Output):
    id: str
    type: str
    data: dict[str, Any]
    ordering_key: str | None
    created_at: datetime
    deliveries: list[DeliverySummary]


class EventPublished(EventOut):
    created: bool = Field(description="false when an identical event already existed")


class EventBatchResult(_Output):
    data: list[EventPublished]


class EventAccepted(_Output):
    """The answer for one event under ``Prefer: return=minimal``."""

    id: str
    created: bool = Field(description="false when an identical event already existed")


class EventBatchAccepted(_Output):
    data: list[EventAccepted]


class EventList(_Output):
    data: list[EventOut]
    next_cursor: str | None


class AttemptOut(_Output):
    number: int
    status_code: int | None
    error: str | None
    duration_ms: float
    started_at: datetime
    response_excerpt: str | None


class DeliveryListItem(_Output):
    id: str
    event_id: str
    endpoint_id: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DeliveryOut(DeliveryListItem):
    attempts: list[AttemptOut]


class DeliveryList(_Output):
    data: list[DeliveryListItem]
    next_cursor: str | None


# -- views: store records → response dicts ----------------------------------------------------


def organization_view(org: Organization) -> dict[str, Any]:
    return {"id": org.id, "name": org.name, "created_at": org.created_at}


def token_view(token: ApiToken, secret: str) -> dict[str, Any]:
    return {
        "id": token.id,
        "token": secret,
        "organization_id": token.organization_id,
        "name": token.name,
        "created_at": token.created_at,
    }


def token_summary_view(token: ApiToken) -> dict[str, Any]:
    return {"id": token.id, "name": token.name, "created_at": token.created_at}


def key_view(key: WebhookKey, *, signing_key_id: str | None) -> dict[str, Any]:
    return {
        "id": key.id,
        "organization_id": key.organization_id,
        "active": key.id == signing_key_id,
        "created_at": key.created_at,
        "activated_at": key.activated_at,
        "revoked_at": key.revoked_at,
    }


def endpoint_view(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "organization_id": endpoint.organization_id,
        "url": endpoint.url,
        "event_types": None if endpoint.event_types is None else list(endpoint.event_types),
        "description": endpoint.description,
        "enabled": endpoint.enabled,
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }


def event_view(event: Event, data: Any = None) -> dict[str, Any]:
    """The API's view of an event; ``data`` saves parsing the stored body when the caller
    already has it (the publish path, which just validated it)."""
    if data is None:
        # The stored body is the exact wire JSON {"id","type","data"}: its data is the event's.
        data = orjson.loads(event.body)["data"]
    return {
        "id": event.id,
        "type": event.type,
        "data": data,
        "ordering_key": event.ordering_key,
        "created_at": event.created_at,
        "deliveries": [
            {"id": d.id, "endpoint_id": d.endpoint_id, "status": d.status.value}
            for d in event.deliveries
        ],
    }


def attempt_view(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "duration_ms": attempt.duration_ms,
        "started_at": attempt.started_at,
        "response_excerpt": attempt.response_excerpt,
    }


def delivery_list_item_view(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "endpoint_id": delivery.endpoint_id,
        "status": delivery.status.value,
        "attempt_count": delivery.attempt_count,
        "next_attempt_at": delivery.next_attempt_at,
        "created_at": delivery.created_at,
        "updated_at": delivery.updated_at,
    }


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    view = delivery_list_item_view(delivery)
    view["attempts"] = [attempt_view(a) for a in delivery.attempts]
    return view


def page_view(items: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    return {"data": items, "next_cursor": next_cursor}
