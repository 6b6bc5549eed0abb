"""``SQLiteStore``: the :class:`~ascend_webhooks.store.base.Store` on an embedded SQLite file.

Writes go to the engine's writer thread (group commit, see ``_engine``); reads to its reader
threads. ``wait_for_work`` wakes at once for work made in this process or rung in from another
process on the same machine (``_doorbell``), and polls ``PRAGMA data_version`` (which changes
when another connection commits) every 0.25 s, for whatever a ring did not cover.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Literal, TypeVar

from ..base import Store, StoreError, StoreUnavailableError
from ..handoff import HandOff
from ..models import (
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
from . import _publish, _reads, _writes
from ._claim import Claimer
from ._doorbell import Doorbell
from ._engine import Engine, EngineClosedError, GroupJob, parse_url
from ._rows import from_ms

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_POLL_SECONDS = 0.25
_UNAVAILABLE = ("locked", "busy", "disk i/o", "unable to open", "readonly", "disk is full")


class SQLiteStore(Store):
    """The embedded store; ``url`` is ``sqlite:///PATH`` (``?synchronous=normal`` relaxes fsync)."""

    def __init__(self, url: str) -> None:
        self._engine = Engine(parse_url(url))
        self._doorbell = Doorbell(self._engine.options.path)
        self._claimer = Claimer()
        self._handoff: HandOff | None = None
        # One object for every publish of this store: the engine groups jobs by it.
        self._publish_group = functools.partial(
            _publish.publish_group, known=self._claimer.leases.known
        )
        self._wakeup: asyncio.Event | None = None
        self._opened = False

    # -- plumbing ----------------------------------------------------------------------------

    async def _write(
        self,
        job: Callable[[sqlite3.Connection], T],
        *,
        durable: bool = True,
        committed: Callable[[T], None] | None = None,
    ) -> T:
        """Run ``job`` on the writer; ``committed`` gets its result once its transaction has
        committed, even if this caller is cancelled meanwhile (the job then still runs)."""
        try:
            future = self._engine.submit(job, durable=durable)
            if committed is None:
                return await future

            def then(done: asyncio.Future[T]) -> None:
                if not done.cancelled() and done.exception() is None:
                    committed(done.result())

            future.add_done_callback(then)
            return await asyncio.shield(future)
        except sqlite3.OperationalError as exc:
            raise _translate(exc) from exc
        except EngineClosedError as exc:  # e.g. a request still running during shutdown
            raise StoreUnavailableError(str(exc)) from exc

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._engine.read(query)
        except sqlite3.OperationalError as exc:
            raise _translate(exc) from exc
        except EngineClosedError as exc:  # e.g. a request still running during shutdown
            raise StoreUnavailableError(str(exc)) from exc

    def _wake(self) -> None:
        """After a commit that made work due: wake this process's waiters, ring the others."""
        self._rung()
        if self._opened:
            self._doorbell.ring()

    def _rung(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._opened:
            return
        self._wakeup = asyncio.Event()
        await asyncio.to_thread(self._engine.start)
        self._opened = True

    async def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        if self._wakeup is not None:
            self._wakeup.set()  # waiting workers return instead of polling a closed file
        self._doorbell.close()
        await asyncio.to_thread(self._engine.stop)

    async def ping(self) -> bool:
        try:
            return bool(await self._read(lambda c: c.execute("SELECT 1").fetchone()[0] == 1))
        except (sqlite3.Error, StoreUnavailableError, RuntimeError):
            return False

    # -- organizations and API tokens --------------------------------------------------------

    async def create_organization(self, name: str) -> Organization:
        return await self._write(lambda c: _writes.create_organization(c, name))

    async def get_organization(self, organization_id: str) -> Organization:
        return await self._read(lambda c: _reads.organization(c, organization_id))

    async def list_organizations(
        self, *, limit: int, after: str | None = None, only: str | None = None
    ) -> Page[Organization]:
        return await self._read(lambda c: _reads.list_organizations(c, limit, after, only))

    async def create_token(
        self, organization_id: str | None, token_hash: bytes, name: str | None = None
    ) -> ApiToken:
        return await self._write(
            lambda c: _writes.create_token(c, organization_id, token_hash, name)
        )

    async def find_token(self, token_hash: bytes) -> ApiToken | None:
        return await self._read(lambda c: _reads.find_token(c, token_hash))

    async def create_first_admin_token(self, token_hash: bytes, name: str) -> ApiToken | None:
        return await self._write(lambda c: _writes.create_first_admin_token(c, token_hash, name))

    async def count_admin_tokens(self) -> int:
        return await self._read(_reads.count_admin_tokens)

    async def list_tokens(self, organization_id: str | None) -> list[ApiToken]:
        return await self._read(lambda c: _reads.list_tokens(c, organization_id))

    async def delete_token(
        self, organization_id: str | None, token_id: str, *, keep_last_admin: bool = False
    ) -> None:
        await self._write(
            lambda c: _writes.delete_token(c, organization_id, token_id, keep_last_admin)
        )

    # -- webhook keys ------------------------------------------------------------------------

    async def create_key(
        self,
        organization_id: str,
        secret_ciphertext: bytes,
        *,
        activate: bool | Literal["if_first"],
        key_id: str | None = None,
    ) -> WebhookKey:
        return await self._write(
            lambda c: _writes.create_key(c, organization_id, secret_ciphertext, activate, key_id)
        )

    async def list_keys(self, organization_id: str) -> list[WebhookKey]:
        return await self._read(lambda c: _reads.list_keys(c, organization_id))

    async def activate_key(self, organization_id: str, key_id: str) -> WebhookKey:
        return await self._write(lambda c: _writes.activate_key(c, organization_id, key_id))

    async def revoke_key(
        self, organization_id: str, key_id: str, *, keep_last_active: bool = False
    ) -> WebhookKey:
        return await self._write(
            lambda c: _writes.revoke_key(c, organization_id, key_id, keep_last_active)
        )

    async def rewrite_key_ciphertexts(
        self, prefix: bytes, rewrite: Callable[[WebhookKey], bytes | None]
    ) -> int:
        return await self._write(lambda c: _writes.rewrite_key_ciphertexts(c, prefix, rewrite))

    async def signing_keys(self, organization_ids: Sequence[str]) -> dict[str, WebhookKey]:
        return await self._read(lambda c: _reads.signing_keys(c, organization_ids))

    # -- endpoints ---------------------------------------------------------------------------

    async def create_endpoint(
        self,
        organization_id: str,
        url: str,
        event_types: Sequence[str] | None,
        description: str | None,
        enabled: bool = True,
    ) -> Endpoint:
        if isinstance(event_types, str):  # a lone type would become a tuple of letters
            raise StoreError("event_types must be a list of strings or None")
        types = None if event_types is None else tuple(event_types)
        return await self._write(
            lambda c: _writes.create_endpoint(c, organization_id, url, types, description, enabled)
        )

    async def get_endpoint(self, organization_id: str, endpoint_id: str) -> Endpoint:
        return await self._read(lambda c: _reads.endpoint(c, organization_id, endpoint_id))

    async def list_endpoints(
        self, organization_id: str, *, limit: int, after: str | None = None
    ) -> Page[Endpoint]:
        return await self._read(lambda c: _reads.list_endpoints(c, organization_id, limit, after))

    async def update_endpoint(
        self, organization_id: str, endpoint_id: str, **changes: object
    ) -> Endpoint:
        endpoint = await self._write(
            lambda c: _writes.update_endpoint(c, organization_id, endpoint_id, changes)
        )
        if changes.get("enabled") is True:
            self._wake()
        return endpoint

    async def delete_endpoint(self, organization_id: str, endpoint_id: str) -> None:
        await self._write(lambda c: _writes.delete_endpoint(c, organization_id, endpoint_id))

    # -- events and deliveries ---------------------------------------------------------------

    async def publish(
        self, organization_id: str, events: Sequence[NewEvent]
    ) -> list[PublishResult]:
        handoff = self._handoff
        call = (organization_id, tuple(events), handoff)
        job = GroupJob(self._publish_group, call, weight=len(call[1]))
        results: list[PublishResult]
        if handoff is None:
            results, _ = await self._write(job)
        else:

            def hand_over(published: _publish.Published) -> None:
                if published[1]:  # leased to the hand-off's worker: it attempts them now
                    handoff.deliver(published[1])

            results, handed = await self._write(job, committed=hand_over)
            if handed and sum(len(r.event.deliveries) for r in results if r.created) == len(handed):
                return results  # the worker has every new delivery: no claim to wake for
        if any(result.created and result.event.deliveries for result in results):
            self._wake()
        return results

    def hand_off(self, handoff: HandOff | None) -> bool:
        self._handoff = handoff
        return True

    async def hand_off_settled(self) -> None:
        # A publish leases only to an open hand-off: once it is closed, the one transaction
        # that may still commit such leases is the one running now. The writer runs this empty
        # one after it and resolves both in that order in the event loop (publishes and worker
        # share it), so that publish's hand-over, a done callback, has run when this returns.
        await self._write(_settle, durable=False)

    async def get_event(self, organization_id: str, event_id: str) -> Event:
        return await self._read(lambda c: _reads.event(c, organization_id, event_id))

    async def list_events(
        self,
        organization_id: str,
        *,
        limit: int,
        after: str | None = None,
        event_type: str | None = None,
    ) -> Page[Event]:
        return await self._read(
            lambda c: _reads.list_events(c, organization_id, limit, after, event_type)
        )

    async def get_delivery(self, organization_id: str, delivery_id: str) -> Delivery:
        return await self._read(lambda c: _reads.delivery(c, organization_id, delivery_id))

    async def list_deliveries(
        self,
        organization_id: str,
        *,
        limit: int,
        after: str | None = None,
        status: DeliveryStatus | None = None,
        endpoint_id: str | None = None,
    ) -> Page[Delivery]:
        return await self._read(
            lambda c: _reads.list_deliveries(c, organization_id, limit, after, status, endpoint_id)
        )

    async def retry_delivery(self, organization_id: str, delivery_id: str) -> Delivery:
        delivery = await self._write(
            lambda c: _writes.retry_delivery(c, organization_id, delivery_id)
        )
        self._wake()
        return delivery

    # -- the worker's side -------------------------------------------------------------------
    #
    # _RELAXED: claims, outcomes and lease changes are written with durable=False, so that a
    # transaction of only those needs no fsync of its own (``_engine``'s docstring). What a
    # power cut can take back is only such writes made after the last durable commit: a lease
    # (the delivery is claimed again), an outcome (the delivery is attempted again, and that
    # attempt is recorded). At-least-once allows both; an accepted event is never lost, and
    # a process crash (rather than the machine's) loses nothing at all.

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
        """As :meth:`Store.claim`; also, at most ``endpoint_room[e]`` deliveries of endpoint
        ``e`` and ``per_endpoint`` of any other (None: no bound but ``limit``), as the
        PostgreSQL store: a worker that passes the room it has for each endpoint gets no
        delivery it would have to give back (``release``) unattempted."""
        excluded = tuple(exclude_endpoints)
        rooms = None if endpoint_room is None else dict(endpoint_room)
        return await self._write(
            lambda c: self._claimer.claim(
                c, worker_id, limit, lease_seconds, excluded, rooms, per_endpoint
            ),
            durable=False,  # see _RELAXED above
        )

    async def record(self, worker_id: str, outcomes: Sequence[AttemptOutcome]) -> None:
        batch = tuple(outcomes)
        if not batch:
            return
        known = self._claimer.leases.known  # seqs of the deliveries this store claimed
        if await self._write(lambda c: _writes.record(c, worker_id, batch, known), durable=False):
            self._wake()

    async def extend_leases(
        self, worker_id: str, delivery_ids: Sequence[str], lease_seconds: float
    ) -> None:
        ids = tuple(delivery_ids)
        if ids:
            await self._write(
                lambda c: _writes.extend_leases(c, worker_id, ids, lease_seconds), durable=False
            )

    async def release(self, worker_id: str, delivery_ids: Sequence[str]) -> None:
        ids = tuple(delivery_ids)
        if not ids:
            return
        leases = self._claimer.leases

        def release(conn: sqlite3.Connection) -> int:
            leases.forget(ids)
            return _writes.release(conn, worker_id, ids)

        released = await self._write(release, durable=False)
        if released > 0:
            self._wake()

    async def endpoint_urls(self, endpoint_ids: Sequence[str]) -> dict[str, str]:
        return await self._read(lambda c: _reads.endpoint_urls(c, endpoint_ids))

    async def lease_holders(self) -> list[str]:
        return await self._read(_reads.lease_holders)

    async def release_worker(self, worker_id: str) -> int:
        released = await self._write(lambda c: _writes.release_worker(c, worker_id), durable=False)
        if released:
            self._wake()
        return released

    async def next_due_at(self) -> datetime | None:
        due = await self._read(_reads.next_due_at)
        return None if due is None else from_ms(due)

    async def wait_for_work(self, max_wait: float) -> None:
        wakeup = self._wakeup
        if wakeup is None:
            raise StoreUnavailableError("the SQLite store is not open")
        self._doorbell.open(self._rung)  # (once; from then on other processes can ring it)
        deadline = time.monotonic() + max(0.0, max_wait)
        seen = await self._engine.data_version()
        while not wakeup.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(wakeup.wait(), min(left, _POLL_SECONDS))
            except TimeoutError:
                if not self._opened:
                    return
                # Another process may have committed to the file meanwhile.
                try:
                    if await self._engine.data_version() != seen:
                        return
                except EngineClosedError:  # closed while we asked
                    return
        if self._opened:
            wakeup.clear()

    async def delivery_counts(self) -> dict[DeliveryStatus, int]:
        return await self._read(_reads.delivery_counts)


def _settle(conn: sqlite3.Connection) -> None:
    """An empty write: committed after every transaction that was running when it was queued."""


def _translate(exc: sqlite3.OperationalError) -> Exception:
    message = str(exc).lower()
    if any(word in message for word in _UNAVAILABLE):
        return StoreUnavailableError(f"the SQLite database is unavailable: {exc}")
    return exc
