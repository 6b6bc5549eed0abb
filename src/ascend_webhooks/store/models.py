"""The records the store keeps, as plain immutable values shared by every backend.

Times are aware UTC ``datetime``s. Ids are strings from :func:`ascend_webhooks.ids.new_id`,
except ``Event.id`` which the publisher may choose (unique within its organization).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = [
    "TERMINAL_STATUSES",
    "ApiToken",
    "Attempt",
    "AttemptOutcome",
    "ClaimedDelivery",
    "Delivery",
    "DeliveryStatus",
    "Endpoint",
    "Event",
    "NewEvent",
    "Organization",
    "Page",
    "PublishResult",
    "WebhookKey",
]


class DeliveryStatus(enum.StrEnum):
    """Where a delivery is: waiting for an attempt, or finished one way or the other."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TERMINAL_STATUSES = frozenset({DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED})


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An API token; ``organization_id`` None means an admin token. Only its hash is kept."""

    id: str
    organization_id: str | None
    name: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WebhookKey:
    """A webhook signing key. ``secret_ciphertext`` is the secret encrypted with the master key.

    The key that signs is the most recently activated one that is not revoked: the first key
    of an organization is activated when it is issued; later keys wait for an explicit
    activation (or their ``activates_at``), so receivers can learn them first.
    """

    id: str
    organization_id: str
    secret_ciphertext: bytes
    created_at: datetime
    activated_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    organization_id: str
    url: str
    event_types: tuple[str, ...] | None  # None: every event type
    description: str | None
    enabled: bool
    created_at: datetime
    updated_at: datetime

    def wants(self, event_type: str) -> bool:
        """Whether an event of this type is delivered here."""
        return self.enabled and (self.event_types is None or event_type in self.event_types)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event as published. ``body`` is the exact JSON sent on every attempt."""

    id: str
    type: str
    body: bytes
    content_hash: bytes  # sha256 of the canonical (type, data, ordering_key): idempotency check
    ordering_key: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    organization_id: str
    type: str
    body: bytes
    ordering_key: str | None
    created_at: datetime
    deliveries: tuple[Delivery, ...] = ()


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int  # 1-based, across every round of the delivery
    started_at: datetime
    duration_ms: float
    status_code: int | None  # None when no response arrived
    error: str | None  # error class, e.g. "timeout", "connect_error", "status_500"
    response_excerpt: str | None  # the response body, truncated


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    organization_id: str
    event_id: str
    endpoint_id: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None  # None once terminal
    created_at: datetime
    updated_at: datetime
    attempts: tuple[Attempt, ...] = ()


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What publishing one event did: ``created`` False means an identical event existed."""

    event: Event  # with its deliveries
    created: bool


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """Everything a worker needs to make one attempt, leased to it until ``lease_expires_at``."""

    id: str
    organization_id: str
    event_id: str
    event_type: str
    endpoint_id: str
    url: str
    body: bytes
    attempt_number: int  # the number this attempt will get (attempt_count + 1)
    round_attempt: int  # 1 for the first attempt of a round (publish or manual retry)
    lease_expires_at: datetime
    # The event's ordering key: the next delivery of the key waits for this one's outcome, so
    # the worker records such an outcome at once instead of batching it with others.
    ordering_key: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """The result of one attempt and the decision taken on it, persisted by ``Store.record``."""

    delivery_id: str
    attempt: Attempt
    status: DeliveryStatus  # PENDING means "retry at next_attempt_at"
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a cursor-paginated list; pass ``next_cursor`` as ``after`` for the next."""

    items: tuple[T, ...]
    next_cursor: str | None = field(default=None)
