"""The one storage interface: every backend (SQLite, PostgreSQL) implements exactly this.

A backend knows nothing of HTTP, signing or retry policy: the API and the worker decide, the
store persists. Every method is a coroutine; every write that returns has been committed.

Concurrency contract, true of every backend:

* ``publish`` commits the events and their deliveries atomically (all or nothing) before it
  returns; backends group concurrent calls into one transaction (group commit).
* ``claim`` never hands one pending delivery to two workers while its lease is valid; a
  delivery whose lease expired (its worker died) is claimable again.
* ``claim`` is fair across organizations (one organization's backlog cannot starve another)
  and respects ordering keys: a delivery whose event has an ``ordering_key`` is not claimable
  while an older delivery with the same key to the same endpoint is still pending.
* ``record`` ignores outcomes for deliveries whose lease this worker no longer holds.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Literal

from .handoff import HandOff
from .models import (
    ApiToken,
    AttemptOutcome,
    ClaimedDelivery,
    Delivery,
    DeliveryStatus,
    Endpoint,
    Event,
    NewEvent,
    Organization,
    Page,
    PublishResult,
    WebhookKey,
)

__all__ = [
    "EventConflictError",
    "InvalidCursorError",
    "InvalidTextError",
    "LastActiveKeyError",
    "LastAdminTokenError",
    "NotFoundError",
    "Store",
    "StoreError",
    "StoreUnavailableError",
]


class StoreError(Exception):
    """Base of the errors a store raises for a caller's mistake (never for its own bugs)."""


class NotFoundError(StoreError):
    """The record does not exist, or belongs to another organization."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached right now (restart, network); retry the call later.

    Nothing is half-done: a write that raised this either committed or left no trace, and
    writes that can be repeated (publish by event id, record by lease) are safe to repeat.
    """


class InvalidCursorError(StoreError):
    """A pagination cursor that no list of this store handed out."""

    def __init__(self, cursor: str) -> None:
        super().__init__(f"invalid cursor {cursor!r}: pass a next_cursor value as is")


class InvalidTextError(StoreError):
    """Text the database cannot store or compare (PostgreSQL: a NUL character)."""


class LastAdminTokenError(StoreError):
    """The admin token to delete is the last one stored, and the caller asked to keep one."""


class LastActiveKeyError(StoreError):
    """The key to revoke is its organization's only active key, and the caller asked to keep one."""


class EventConflictError(StoreError):
    """An event with this id exists in the organization with different content."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event {event_id!r} already exists with different content")
        self.event_id = event_id


class Store(abc.ABC):
    """Persistence for organizations, tokens, keys, endpoints, events, deliveries, attempts."""

    # -- lifecycle -------------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect (pool) and apply pending migrations; safe to call from many processes."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every connection."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the database answers a trivial query."""

    # -- organizations and API tokens ------------------------------------------------------

    @abc.abstractmethod
    async def create_organization(self, name: str) -> Organization: ...

    @abc.abstractmethod
    async def get_organization(self, organization_id: str) -> Organization:
        """Raises NotFoundError."""

    @abc.abstractmethod
    async def list_organizations(
        self, *, limit: int, after: str | None = None, only: str | None = None
    ) -> Page[Organization]:
        """Organizations by id; ``only`` restricts the list to that one organization."""

    @abc.abstractmethod
    async def create_token(
        self, organization_id: str | None, token_hash: bytes, name: str | None = None
    ) -> ApiToken:
        """Store a token by its hash; None as organization makes an admin token."""

    @abc.abstractmethod
    async def create_first_admin_token(self, token_hash: bytes, name: str) -> ApiToken | None:
        """Store an admin token only if there is none yet, atomically; None if there was one.

        Several processes starting at once on an empty database create one token between them.
        """

    @abc.abstractmethod
    async def find_token(self, token_hash: bytes) -> ApiToken | None:
        """The token with this hash, or None."""

    @abc.abstractmethod
    async def count_admin_tokens(self) -> int: ...

    @abc.abstractmethod
    async def list_tokens(self, organization_id: str | None) -> list[ApiToken]:
        """This organization's tokens (None: the admin tokens), oldest first."""

    @abc.abstractmethod
    async def delete_token(
        self, organization_id: str | None, token_id: str, *, keep_last_admin: bool = False
    ) -> None:
        """Delete a token of this organization (None: an admin token); else NotFoundError.

        With ``keep_last_admin``, deleting the last stored admin token raises
        LastAdminTokenError; checked in the same transaction as the delete, so two deletes
        racing for the last two admin tokens cannot both succeed.
        """

    # -- webhook keys ----------------------------------------------------------------------

    @abc.abstractmethod
    async def create_key(
        self,
        organization_id: str,
        secret_ciphertext: bytes,
        *,
        activate: bool | Literal["if_first"],
        key_id: str | None = None,
    ) -> WebhookKey:
        """Issue a key; ``activate`` makes it the signing key at once. Raises NotFoundError.

        ``"if_first"`` activates it only if the organization has no active key (activated, not
        revoked); checked in the same transaction as the insert, so of several first keys
        issued at once exactly one is activated. The key returned says which it is.
        ``key_id`` is the id to give it (a new ``key_…`` id if None): the caller encrypts the
        secret for its organization and id, so it needs the id first.
        """

    @abc.abstractmethod
    async def list_keys(self, organization_id: str) -> list[WebhookKey]:
        """Every key of the organization, oldest first."""

    @abc.abstractmethod
    async def activate_key(self, organization_id: str, key_id: str) -> WebhookKey:
        """Make this key the signing key (activated_at = now). Raises NotFoundError."""

    @abc.abstractmethod
    async def revoke_key(
        self, organization_id: str, key_id: str, *, keep_last_active: bool = False
    ) -> WebhookKey:
        """Stop using this key for good (a revoked key stays as it is). Raises NotFoundError.

        With ``keep_last_active``, revoking the organization's only active key (activated, not
        revoked) raises LastActiveKeyError; checked in the same transaction as the revoke, so
        two revokes racing for the last two active keys cannot both succeed.
        """

    @abc.abstractmethod
    async def rewrite_key_ciphertexts(
        self, prefix: bytes, rewrite: Callable[[WebhookKey], bytes | None]
    ) -> int:
        """Replace, in one transaction, the ciphertext of every key (of every organization,
        revoked ones included) whose ciphertext starts with ``prefix`` by ``rewrite(key)``
        (None: leave it); how many were replaced.

        A row is replaced only if its ciphertext is still the one ``rewrite`` was given:
        processes doing the same at once replace each row once (the others leave it).
        """

    @abc.abstractmethod
    async def signing_keys(self, organization_ids: Sequence[str]) -> dict[str, WebhookKey]:
        """For each organization that has one, its current signing key."""

    # -- endpoints -------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_endpoint(
        self,
        organization_id: str,
        url: str,
        event_types: Sequence[str] | None,
        description: str | None,
        enabled: bool = True,
    ) -> Endpoint: ...

    @abc.abstractmethod
    async def get_endpoint(self, organization_id: str, endpoint_id: str) -> Endpoint:
        """Raises NotFoundError."""

    @abc.abstractmethod
    async def list_endpoints(
        self, organization_id: str, *, limit: int, after: str | None = None
    ) -> Page[Endpoint]: ...

    @abc.abstractmethod
    async def update_endpoint(
        self, organization_id: str, endpoint_id: str, **changes: object
    ) -> Endpoint:
        """Change any of url, event_types, description, enabled. Raises NotFoundError."""

    @abc.abstractmethod
    async def delete_endpoint(self, organization_id: str, endpoint_id: str) -> None:
        """Delete the endpoint; its pending deliveries become failed. Raises NotFoundError."""

    # -- events and deliveries -------------------------------------------------------------

    @abc.abstractmethod
    async def publish(
        self, organization_id: str, events: Sequence[NewEvent]
    ) -> list[PublishResult]:
        """Store events and one pending delivery per enabled endpoint that wants each type.

        All or nothing, committed on return. An event whose id exists with the same
        ``content_hash`` yields ``created=False`` and the stored event (no new deliveries);
        with a different hash the whole call raises EventConflictError.
        """

    @abc.abstractmethod
    async def get_event(self, organization_id: str, event_id: str) -> Event:
        """The event with its deliveries. Raises NotFoundError."""

    @abc.abstractmethod
    async def list_events(
        self,
        organization_id: str,
        *,
        limit: int,
        after: str | None = None,
        event_type: str | None = None,
    ) -> Page[Event]:
        """Newest first, each with its deliveries."""

    @abc.abstractmethod
    async def get_delivery(self, organization_id: str, delivery_id: str) -> Delivery:
        """The delivery with its attempts, oldest first. Raises NotFoundError."""

    @abc.abstractmethod
    async def list_deliveries(
        self,
        organization_id: str,
        *,
        limit: int,
        after: str | None = None,
        status: DeliveryStatus | None = None,
        endpoint_id: str | None = None,
    ) -> Page[Delivery]:
        """Newest first, without attempts."""

    @abc.abstractmethod
    async def retry_delivery(self, organization_id: str, delivery_id: str) -> Delivery:
        """Start a new round of attempts now for a failed delivery.

        Raises NotFoundError; raises StoreError if the delivery is not failed.
        """

    # -- the worker's side -----------------------------------------------------------------

    @abc.abstractmethod
    async def claim(
        self,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        *,
        exclude_endpoints: Sequence[str] = (),
        endpoint_room: Mapping[str, int] | None = None,
        per_endpoint: int | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due pending deliveries to this worker (see the contract above).

        ``exclude_endpoints`` are endpoints this worker has no room for right now. With
        ``endpoint_room``, at most ``endpoint_room[e]`` deliveries of endpoint ``e`` are
        leased, and at most ``per_endpoint`` of any endpoint not in it (None: no bound but
        ``limit``): a worker that passes the room it has gets nothing it must give back
        unattempted.
        """

    @abc.abstractmethod
    async def record(self, worker_id: str, outcomes: Sequence[AttemptOutcome]) -> None:
        """Persist attempts and the decision on each delivery, and release their leases."""

    @abc.abstractmethod
    async def extend_leases(
        self, worker_id: str, delivery_ids: Sequence[str], lease_seconds: float
    ) -> None:
        """Heartbeat: keep the leases of attempts still in flight."""

    @abc.abstractmethod
    async def release(self, worker_id: str, delivery_ids: Sequence[str]) -> None:
        """Give leased deliveries back unattempted (shutdown); they are due again at once."""

    @abc.abstractmethod
    async def endpoint_urls(self, endpoint_ids: Sequence[str]) -> dict[str, str]:
        """The URL of each of ``endpoint_ids`` that may be sent to now: enabled, not deleted
        (any other is absent from the answer). Workers ask it about the deliveries they
        claimed ahead, so that a change to an endpoint reaches those too."""

    @abc.abstractmethod
    async def lease_holders(self) -> list[str]:
        """The ids of the workers that hold at least one unexpired lease, sorted."""

    @abc.abstractmethod
    async def release_worker(self, worker_id: str) -> int:
        """Give back every lease ``worker_id`` holds (its process is known to be dead).

        The deliveries are due again at once, unattempted (no attempt is recorded, the
        attempt number stays); returns how many were released.
        """

    def hand_off(self, handoff: HandOff | None) -> bool:
        """Lease new deliveries to an in-process worker as they are published (see
        ``handoff.py``); None ends it. Returns whether this store does (the default: no)."""
        return False

    async def hand_off_settled(self) -> None:
        """Return once every publish that leased deliveries to a hand-off before it was closed
        has handed them over, so that its stopping worker can give back what it will not
        attempt (the default: at once, for a store that does not hand off)."""
        return

    @abc.abstractmethod
    async def next_due_at(self) -> datetime | None:
        """When the earliest pending delivery becomes due (or None if none is pending)."""

    @abc.abstractmethod
    async def wait_for_work(self, max_wait: float) -> None:
        """Return when a publish or retry may have made work due, or after ``max_wait`` s."""

    @abc.abstractmethod
    async def delivery_counts(self) -> dict[DeliveryStatus, int]:
        """How many deliveries are in each status (for metrics)."""
