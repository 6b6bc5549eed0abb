"""The one behaviour suite every store passes: it speaks only the ``Store`` interface.

The ``store`` fixture (tests/conftest.py) runs each test on a fresh SQLite file and a fresh
PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from ascend_webhooks.store import EventConflictError, NotFoundError, Store, StoreError, open_store
from ascend_webhooks.store.base import InvalidCursorError, LastActiveKeyError, LastAdminTokenError
from ascend_webhooks.store.models import (
    Attempt,
    AttemptOutcome,
    ClaimedDelivery,
    DeliveryStatus,
    NewEvent,
    WebhookKey,
)

PENDING, SUCCEEDED, FAILED = DeliveryStatus.PENDING, DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED


def new_event(
    event_id: str,
    event_type: str = "invoice.paid",
    data: object = None,
    ordering_key: str | None = None,
) -> NewEvent:
    data = {} if data is None else data
    body = json.dumps({"id": event_id, "type": event_type, "data": data}).encode()
    canonical = json.dumps([event_type, data, ordering_key], sort_keys=True).encode()
    return NewEvent(
        id=event_id,
        type=event_type,
        body=body,
        content_hash=hashlib.sha256(canonical).digest(),
        ordering_key=ordering_key,
    )


def outcome(
    delivery_id: str,
    status: DeliveryStatus,
    *,
    code: int | None = 200,
    retry_in: float | None = None,
) -> AttemptOutcome:
    now = datetime.now(UTC)
    return AttemptOutcome(
        delivery_id=delivery_id,
        attempt=Attempt(
            number=0,
            started_at=now,
            duration_ms=12.5,
            status_code=code,
            error=None if code == 200 else "connect_error" if code is None else f"status_{code}",
            response_excerpt="ok" if code == 200 else "nope",
        ),
        status=status,
        next_attempt_at=None if retry_in is None else now + timedelta(seconds=retry_in),
    )


async def setup_org(store: Store, name: str = "acme", endpoints: int = 1) -> tuple[str, list[str]]:
    org = await store.create_organization(name)
    ids = []
    for n in range(endpoints):
        endpoint = await store.create_endpoint(org.id, f"https://e{n}.example/hook", None, None)
        ids.append(endpoint.id)
    return org.id, ids


async def publish_one(store: Store, org: str, event: NewEvent) -> list[str]:
    """Publish one event; the ids of its deliveries."""
    (result,) = await store.publish(org, [event])
    return [delivery.id for delivery in result.event.deliveries]


def ids_of(claimed: Sequence[ClaimedDelivery]) -> set[str]:
    return {c.id for c in claimed}


# -- lifecycle, organizations, tokens ----------------------------------------------------------


async def test_ping(store: Store) -> None:
    assert await store.ping() is True


async def test_organizations(store: Store) -> None:
    created = [await store.create_organization(f"org {n}") for n in range(5)]
    got = await store.get_organization(created[2].id)
    assert got == created[2]
    assert got.created_at.tzinfo is not None
    with pytest.raises(NotFoundError):
        await store.get_organization("org_missing")

    seen, cursor = [], None
    while True:
        page = await store.list_organizations(limit=2, after=cursor)
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [o.id for o in seen] == sorted(o.id for o in created)
    only = await store.list_organizations(limit=10, only=created[3].id)
    assert only.items == (created[3],)
    assert only.next_cursor is None


async def test_tokens(store: Store) -> None:
    org, _ = await setup_org(store)
    assert await store.count_admin_tokens() == 0
    admin = await store.create_token(None, b"a" * 32, "bootstrap")
    scoped = await store.create_token(org, b"b" * 32)
    assert admin.organization_id is None
    assert admin.name == "bootstrap"
    assert scoped.organization_id == org
    assert await store.count_admin_tokens() == 1
    assert await store.find_token(b"a" * 32) == admin
    assert await store.find_token(b"b" * 32) == scoped
    assert await store.find_token(b"c" * 32) is None
    with pytest.raises(NotFoundError):
        await store.create_token("org_missing", b"d" * 32)


async def test_the_first_admin_token_is_made_once_by_starts_racing_for_it(
    store: Store, database_url: str
) -> None:
    # Several processes starting at once on an empty database: each has its own store.
    others = [open_store(database_url) for _ in range(3)]
    await asyncio.gather(*(other.open() for other in others))
    try:
        made = await asyncio.gather(
            store.create_first_admin_token(b"0" * 32, "admin"),
            *(
                other.create_first_admin_token(bytes([n + 1]) * 32, "admin")
                for n, other in enumerate(others)
            ),
        )
    finally:
        await asyncio.gather(*(other.close() for other in others))
    created = [token for token in made if token is not None]
    assert len(created) == 1
    assert await store.list_tokens(None) == created
    assert await store.create_first_admin_token(b"9" * 32, "admin") is None


async def test_the_last_admin_token_is_kept_when_asked_even_against_a_racing_delete(
    store: Store,
) -> None:
    only = await store.create_token(None, b"a" * 32)
    with pytest.raises(LastAdminTokenError):
        await store.delete_token(None, only.id, keep_last_admin=True)
    assert await store.list_tokens(None) == [only]
    for round_ in range(5):  # two deletes racing for the last two: one wins, one is refused
        other = await store.create_token(None, bytes([round_ + 1]) * 32)
        outcomes = await asyncio.gather(
            store.delete_token(None, only.id, keep_last_admin=True),
            store.delete_token(None, other.id, keep_last_admin=True),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, LastAdminTokenError)]
        assert len(refused) == 1, outcomes
        assert outcomes.count(None) == 1, outcomes
        (only,) = await store.list_tokens(None)
    # Without the flag (a configured admin token is the way back in) the last one can go.
    await store.delete_token(None, only.id)
    assert await store.list_tokens(None) == []
    org, _ = await setup_org(store)
    scoped = await store.create_token(org, b"z" * 32)
    await store.delete_token(org, scoped.id, keep_last_admin=True)  # only admin tokens are kept


async def test_list_and_delete_tokens(store: Store) -> None:
    org, _ = await setup_org(store)
    other, _ = await setup_org(store, "other")
    admin = await store.create_token(None, b"a" * 32, "bootstrap")
    first = await store.create_token(org, b"b" * 32, "ci")
    second = await store.create_token(org, b"c" * 32)
    theirs = await store.create_token(other, b"d" * 32)
    assert await store.list_tokens(None) == [admin]
    # Ordered by creation time; two made in the same millisecond may come in either order.
    assert {t.id for t in await store.list_tokens(org)} == {first.id, second.id}
    assert await store.list_tokens(other) == [theirs]
    # Scoped: another organization's token, or an organization's token as admin, is not found.
    for scope, token_id in [(org, theirs.id), (None, first.id), (org, admin.id), (org, "tok_x")]:
        with pytest.raises(NotFoundError):
            await store.delete_token(scope, token_id)
    await store.delete_token(org, first.id)
    assert await store.find_token(b"b" * 32) is None
    assert [t.id for t in await store.list_tokens(org)] == [second.id]
    with pytest.raises(NotFoundError):
        await store.delete_token(org, first.id)  # already gone
    await store.delete_token(None, admin.id)
    assert await store.list_tokens(None) == []
    assert await store.count_admin_tokens() == 0
    assert await store.find_token(b"d" * 32) == theirs


# -- webhook keys --------------------------------------------------------------------------------


async def test_keys_rotation(store: Store) -> None:
    org, _ = await setup_org(store)
    other, _ = await setup_org(store, "other")
    assert await store.signing_keys([org]) == {}
    first = await store.create_key(org, b"cipher-1", activate=True)
    second = await store.create_key(org, b"cipher-2", activate=False)
    assert first.activated_at is not None
    assert second.activated_at is None
    assert first.secret_ciphertext == b"cipher-1"
    assert [k.id for k in await store.list_keys(org)] == [first.id, second.id]
    assert (await store.signing_keys([org, other]))[org].id == first.id
    assert other not in await store.signing_keys([org, other])

    activated = await store.activate_key(org, second.id)
    assert activated.activated_at is not None
    assert (await store.signing_keys([org]))[org].id == second.id
    revoked = await store.revoke_key(org, second.id)
    assert revoked.revoked_at is not None
    assert (await store.signing_keys([org]))[org].id == first.id

    for call in (store.activate_key, store.revoke_key):
        with pytest.raises(NotFoundError):
            await call(org, "key_missing")
        with pytest.raises(NotFoundError):
            await call(other, first.id)  # another organization's key
    assert await store.list_keys(other) == []


async def test_of_first_keys_issued_at_once_one_is_activated(store: Store) -> None:
    # Several first keys of each organization at once: exactly one of each is activated.
    orgs = [(await setup_org(store, f"org-{n}", endpoints=0))[0] for n in range(4)]
    issued = await asyncio.gather(
        *(store.create_key(org, b"c", activate="if_first") for org in orgs * 5)
    )
    for org in orgs:
        mine = [k for k in issued if k.organization_id == org]
        active = [k for k in mine if k.activated_at is not None]
        assert len(active) == 1, mine
        stored = {k.id: k.activated_at for k in await store.list_keys(org)}
        assert stored == {k.id: k.activated_at for k in mine}
        assert (await store.signing_keys([org]))[org].id == active[0].id

    # "First" is: no active key. A later key waits; with the active one revoked, one signs.
    assert (await store.create_key(org, b"c", activate="if_first")).activated_at is None
    await store.revoke_key(org, active[0].id)
    again = await store.create_key(org, b"c", activate="if_first")
    assert again.activated_at is not None
    assert (await store.signing_keys([org]))[org].id == again.id


async def test_the_last_active_key_is_kept_when_asked_even_against_racing_revokes(
    store: Store,
) -> None:
    org, _ = await setup_org(store)
    first = await store.create_key(org, b"cipher-1", activate=True)
    standby = await store.create_key(org, b"cipher-2", activate=False)
    with pytest.raises(LastActiveKeyError):
        await store.revoke_key(org, first.id, keep_last_active=True)
    # A key that never signed may go; a revoked one stays as it is.
    revoked = await store.revoke_key(org, standby.id, keep_last_active=True)
    assert revoked.revoked_at is not None
    assert await store.revoke_key(org, standby.id, keep_last_active=True) == revoked
    assert (await store.signing_keys([org]))[org].id == first.id

    # Each organization's three active keys revoked at once: exactly one of each is kept.
    orgs = [(await setup_org(store, f"racing-{n}", endpoints=0))[0] for n in range(4)]
    keys = [(org, (await store.create_key(org, b"c", activate=True)).id) for org in orgs * 3]
    outcomes = await asyncio.gather(
        *(store.revoke_key(org, key, keep_last_active=True) for org, key in keys),
        return_exceptions=True,
    )
    for org in orgs:
        mine = [o for (owner, _), o in zip(keys, outcomes, strict=True) if owner == org]
        assert [isinstance(o, LastActiveKeyError) for o in mine].count(True) == 1, mine
        assert all(isinstance(o, LastActiveKeyError | WebhookKey) for o in mine), mine
        kept = [k for k in await store.list_keys(org) if k.revoked_at is None]
        assert len(kept) == 1
        assert (await store.signing_keys([org]))[org].id == kept[0].id

    # Without the flag the last one can go.
    await store.revoke_key(org, kept[0].id)
    assert org not in await store.signing_keys([org])


async def test_a_key_takes_the_id_its_caller_chose(store: Store) -> None:
    # The caller encrypts the secret for the key's id, so it makes the id first.
    org, _ = await setup_org(store, endpoints=0)
    key = await store.create_key(org, b"c", activate="if_first", key_id="key_chosen")
    assert key.id == "key_chosen"
    assert key.activated_at is not None
    assert [k.id for k in await store.list_keys(org)] == ["key_chosen"]
    assert (await store.signing_keys([org]))[org].id == "key_chosen"
    assert (await store.create_key(org, b"c", activate=False)).id.startswith("key_")


async def test_key_ciphertexts_with_a_prefix_are_rewritten_in_place(store: Store) -> None:
    orgs = [(await setup_org(store, f"rewrite-{n}", endpoints=0))[0] for n in range(3)]
    old = [await store.create_key(org, b"\x01old-" + org.encode(), activate=True) for org in orgs]
    revoked = await store.create_key(orgs[0], b"\x01revoked", activate=False)
    revoked = await store.revoke_key(orgs[0], revoked.id)
    current = await store.create_key(orgs[1], b"\x02current", activate=False)
    left = await store.create_key(orgs[2], b"\x01left", activate=False)
    before = {k.id: k for org in orgs for k in await store.list_keys(org)}
    offered: list[WebhookKey] = []

    def rewrite(key: WebhookKey) -> bytes | None:
        offered.append(key)
        if key.id == left.id:
            return None  # left as it is
        return b"\x02" + key.id.encode() + b"/" + key.secret_ciphertext[1:]

    assert await store.rewrite_key_ciphertexts(b"\x01", rewrite) == 4
    assert sorted(offered, key=lambda k: k.id) == sorted(
        [before[k.id] for k in [*old, revoked, left]], key=lambda k: k.id
    )
    after = {k.id: k for org in orgs for k in await store.list_keys(org)}
    for key in [*old, revoked]:
        expected = b"\x02" + key.id.encode() + b"/" + key.secret_ciphertext[1:]
        # Only the ciphertext changes: the key keeps its organization, activation, revocation.
        assert after[key.id] == dataclasses.replace(before[key.id], secret_ciphertext=expected)
    assert after[current.id] == before[current.id]
    assert after[left.id] == before[left.id]
    assert {o: k.id for o, k in (await store.signing_keys(orgs)).items()} == {
        k.organization_id: k.id for k in old
    }

    offered.clear()  # a second run finds only the row left behind
    assert await store.rewrite_key_ciphertexts(b"\x01", rewrite) == 0
    assert [k.id for k in offered] == [left.id]


async def test_key_ciphertexts_rewritten_by_racing_processes_are_rewritten_once(
    store: Store, database_url: str
) -> None:
    orgs = [(await setup_org(store, f"race-{n}", endpoints=0))[0] for n in range(4)]
    keys = [await store.create_key(org, b"\x01old", activate=False) for org in orgs * 3]
    # Several processes starting at once, each with its own store and its own rewrite (as
    # encryption would, each makes a ciphertext of its own).
    others = [open_store(database_url) for _ in range(3)]
    await asyncio.gather(*(other.open() for other in others))
    try:
        counts = await asyncio.gather(
            *(
                each.rewrite_key_ciphertexts(
                    b"\x01", lambda k, n=n: b"\x02" + bytes([n]) + k.id.encode()
                )
                for n, each in enumerate([store, *others, store])
            )
        )
    finally:
        await asyncio.gather(*(other.close() for other in others))
    assert sum(counts) == len(keys)
    for org in orgs:
        for key in await store.list_keys(org):
            assert key.secret_ciphertext[:1] == b"\x02"
            assert key.secret_ciphertext[2:] == key.id.encode()


# -- endpoints -----------------------------------------------------------------------------------


async def test_endpoint_crud(store: Store) -> None:
    org, _ = await setup_org(store, endpoints=0)
    created = await store.create_endpoint(
        org, "https://a.example/hook", ["invoice.paid", "payout.paid"], "billing"
    )
    assert created.event_types == ("invoice.paid", "payout.paid")
    assert created.enabled is True
    assert created.description == "billing"
    assert await store.get_endpoint(org, created.id) == created

    updated = await store.update_endpoint(
        org, created.id, url="https://b.example/hook", event_types=None, enabled=False
    )
    assert updated.url == "https://b.example/hook"
    assert updated.event_types is None
    assert updated.enabled is False
    assert updated.description == "billing"
    assert updated.updated_at >= created.updated_at
    assert await store.get_endpoint(org, created.id) == updated

    await store.delete_endpoint(org, created.id)
    with pytest.raises(NotFoundError):
        await store.get_endpoint(org, created.id)
    with pytest.raises(NotFoundError):
        await store.delete_endpoint(org, created.id)
    with pytest.raises(NotFoundError):
        await store.update_endpoint(org, created.id, enabled=True)


async def test_list_endpoints_pages_by_id(store: Store) -> None:
    org, made = await setup_org(store, endpoints=7)
    seen, cursor = [], None
    while True:
        page = await store.list_endpoints(org, limit=3, after=cursor)
        assert len(page.items) <= 3
        seen.extend(e.id for e in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(made)


@pytest.mark.parametrize("path", ["plain", "ordering key", "NUL in the excerpt"])
async def test_an_attempt_in_flight_when_its_endpoint_is_deleted_is_still_recorded(
    store: Store, path: str
) -> None:
    """Deleting an endpoint fails its pending deliveries; an attempt already on its way was
    made all the same (the receiver may have acted on it): its outcome is kept in the history,
    the delivery stays failed. (Each path through the SQLite store's record: one statement per
    table, one by one for an ordering key, executemany where JSON cannot carry a NUL.)"""
    org, (endpoint,) = await setup_org(store)
    key = "k" if path == "ordering key" else None
    await store.publish(org, [new_event("evt_1", ordering_key=key), new_event("evt_2")])
    claimed = await store.claim("w1", 1, 30)
    (first,) = claimed
    await store.delete_endpoint(org, endpoint)
    answer = outcome(first.id, PENDING, code=500, retry_in=5)  # it would have been retried
    if path == "NUL in the excerpt":
        answer = dataclasses.replace(
            answer, attempt=dataclasses.replace(answer.attempt, response_excerpt="a\0b")
        )
    await store.record("w2", [outcome(first.id, SUCCEEDED)])  # not its lease: nothing
    await store.record("w1", [answer])
    delivery = await store.get_delivery(org, first.id)
    assert delivery.status is FAILED
    assert delivery.next_attempt_at is None
    assert delivery.attempt_count == 1
    assert [(a.number, a.status_code) for a in delivery.attempts] == [(1, 500)]
    await store.record("w1", [outcome(first.id, SUCCEEDED)])  # once only
    assert (await store.get_delivery(org, first.id)).attempt_count == 1
    assert await store.claim("w1", 10, 30) == []
    assert await store.lease_holders() == []


async def test_endpoint_urls_names_only_endpoints_that_may_be_sent_to(store: Store) -> None:
    org, (live, disabled, deleted, moved) = await setup_org(store, endpoints=4)
    await store.update_endpoint(org, disabled, enabled=False)
    await store.delete_endpoint(org, deleted)
    await store.update_endpoint(org, moved, url="https://elsewhere.example/hook")
    urls = await store.endpoint_urls([live, disabled, deleted, moved, "ep_unknown", live])
    assert urls == {
        live: (await store.get_endpoint(org, live)).url,
        moved: "https://elsewhere.example/hook",
    }
    assert await store.endpoint_urls([]) == {}


async def test_delete_endpoint_fails_its_pending_deliveries_and_keeps_history(
    store: Store,
) -> None:
    org, (endpoint, kept) = await setup_org(store, endpoints=2)
    (result,) = await store.publish(org, [new_event("evt_1")])
    by_endpoint = {d.endpoint_id: d.id for d in result.event.deliveries}
    await store.delete_endpoint(org, endpoint)
    gone = await store.get_delivery(org, by_endpoint[endpoint])
    assert gone.status is FAILED
    assert gone.next_attempt_at is None
    assert (await store.get_delivery(org, by_endpoint[kept])).status is PENDING
    assert ids_of(await store.claim("w", 10, 30)) == {by_endpoint[kept]}
    # Later events no longer go there.
    (later,) = await store.publish(org, [new_event("evt_2")])
    assert [d.endpoint_id for d in later.event.deliveries] == [kept]


# -- publish -------------------------------------------------------------------------------------


async def test_publish_fans_out_by_event_type_and_skips_disabled(store: Store) -> None:
    org, (every,) = await setup_org(store)
    invoices = await store.create_endpoint(org, "https://i.example", ["invoice.paid"], None)
    payouts = await store.create_endpoint(org, "https://p.example", ["payout.paid"], None)
    await store.create_endpoint(org, "https://off.example", None, None, enabled=False)

    (result,) = await store.publish(org, [new_event("evt_1", "invoice.paid", {"n": 1})])
    assert result.created is True
    event = result.event
    assert event.id == "evt_1"
    assert event.type == "invoice.paid"
    assert event.organization_id == org
    assert json.loads(event.body) == {"id": "evt_1", "type": "invoice.paid", "data": {"n": 1}}
    assert {d.endpoint_id for d in event.deliveries} == {every, invoices.id}
    for delivery in event.deliveries:
        assert delivery.status is PENDING
        assert delivery.attempt_count == 0
        assert delivery.event_id == "evt_1"
        assert delivery.organization_id == org
        assert delivery.next_attempt_at is not None

    (other,) = await store.publish(org, [new_event("evt_2", "refund.paid")])
    assert [d.endpoint_id for d in other.event.deliveries] == [every]
    assert payouts.id not in {d.endpoint_id for d in other.event.deliveries}
    assert await store.get_event(org, "evt_1") == event


async def test_publish_is_idempotent_by_id_and_content(store: Store) -> None:
    org, _ = await setup_org(store, endpoints=2)
    (first,) = await store.publish(org, [new_event("evt_1", data={"a": 1})])
    (again,) = await store.publish(org, [new_event("evt_1", data={"a": 1})])
    assert first.created is True
    assert again.created is False
    assert again.event == first.event
    assert len(again.event.deliveries) == 2
    counts = await store.delivery_counts()
    assert counts[PENDING] == 2

    with pytest.raises(EventConflictError) as caught:
        await store.publish(org, [new_event("evt_1", data={"a": 2})])
    assert caught.value.event_id == "evt_1"
    assert isinstance(caught.value, StoreError)
    assert (await store.get_event(org, "evt_1")).body == first.event.body


async def test_publish_batch_is_all_or_nothing(store: Store) -> None:
    org, _ = await setup_org(store)
    await store.publish(org, [new_event("evt_old", data={"v": 1})])
    batch = [new_event("evt_new_1"), new_event("evt_old", data={"v": 2}), new_event("evt_new_2")]
    with pytest.raises(EventConflictError):
        await store.publish(org, batch)
    for missing in ("evt_new_1", "evt_new_2"):
        with pytest.raises(NotFoundError):
            await store.get_event(org, missing)
    assert (await store.delivery_counts())[PENDING] == 1

    # Duplicate ids inside one batch: same content is one event, different content a conflict.
    results = await store.publish(org, [new_event("evt_dup"), new_event("evt_dup")])
    assert [r.event.id for r in results] == ["evt_dup", "evt_dup"]
    assert results[0].created is True
    assert results[1].created is False
    assert results[0].event.deliveries == results[1].event.deliveries
    with pytest.raises(EventConflictError):
        await store.publish(org, [new_event("evt_x", data={"v": 1}), new_event("evt_x")])
    with pytest.raises(NotFoundError):
        await store.get_event(org, "evt_x")
    assert (await store.delivery_counts())[PENDING] == 2


async def test_concurrent_publishes_fail_alone(store: Store) -> None:
    """A conflicting call in the same group commit does not take the others down."""
    org, _ = await setup_org(store)
    await store.publish(org, [new_event("evt_taken", data={"v": 1})])
    calls = [store.publish(org, [new_event(f"evt_{n}")]) for n in range(50)]
    calls.insert(25, store.publish(org, [new_event("evt_taken", data={"v": 2})]))
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], EventConflictError)
    assert (await store.delivery_counts())[PENDING] == 51


async def test_concurrent_publishes_of_one_id_store_it_once(store: Store) -> None:
    org, _ = await setup_org(store)
    same = await asyncio.gather(*(store.publish(org, [new_event("evt_same")]) for _ in range(10)))
    assert [result.created for (result,) in same].count(True) == 1
    assert len({result.event for (result,) in same}) == 1
    assert (await store.delivery_counts())[PENDING] == 1

    racing = await asyncio.gather(
        *(store.publish(org, [new_event("evt_race", data={"n": n})]) for n in range(5)),
        return_exceptions=True,
    )
    winners = [r for r in racing if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, EventConflictError) for r in racing if r not in winners)
    assert (await store.get_event(org, "evt_race")) == winners[0][0].event


async def test_publish_to_missing_organization(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.publish("org_missing", [new_event("evt_1")])


# -- reading events and deliveries --------------------------------------------------------------


async def test_events_list_newest_first_with_type_filter_and_cursor(store: Store) -> None:
    org, _ = await setup_org(store)
    types = ["invoice.paid", "payout.paid", "refund.paid"]
    for n in range(10):
        await store.publish(org, [new_event(f"evt_{n}", types[n % 3])])
    seen, cursor = [], None
    while True:
        page = await store.list_events(org, limit=3, after=cursor)
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [e.id for e in seen] == [f"evt_{n}" for n in reversed(range(10))]
    assert all(len(e.deliveries) == 1 for e in seen)
    payouts = await store.list_events(org, limit=10, event_type="payout.paid")
    assert [e.id for e in payouts.items] == ["evt_7", "evt_4", "evt_1"]
    assert payouts.next_cursor is None
    with pytest.raises(InvalidCursorError):
        await store.list_events(org, limit=3, after="not a cursor")


async def test_a_claimed_delivery_carries_its_events_ordering_key(store: Store) -> None:
    # The worker records the outcome of a keyed delivery at once: the next of the key waits.
    org, _ = await setup_org(store)
    await store.publish(org, [new_event("evt_k", ordering_key="cus_1"), new_event("evt_plain")])
    claimed = await store.claim("w", 10, 30)
    assert {(c.event_id, c.ordering_key) for c in claimed} == {
        ("evt_k", "cus_1"),
        ("evt_plain", None),
    }


async def test_deliveries_list_filters_and_pages(store: Store) -> None:
    org, (a, b) = await setup_org(store, endpoints=2)
    for n in range(6):
        await store.publish(org, [new_event(f"evt_{n}")])
    claimed = await store.claim("w", 3, 30)
    await store.record("w", [outcome(c.id, SUCCEEDED) for c in claimed])
    every, cursor = [], None
    while True:
        page = await store.list_deliveries(org, limit=5, after=cursor)
        every.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(every) == 12
    assert len({d.id for d in every}) == 12
    assert all(d.attempts == () for d in every)
    created = [d.created_at for d in every]
    assert created == sorted(created, reverse=True)
    done = await store.list_deliveries(org, limit=50, status=SUCCEEDED)
    assert {d.id for d in done.items} == ids_of(claimed)
    to_a = await store.list_deliveries(org, limit=50, endpoint_id=a)
    assert len(to_a.items) == 6
    assert {d.endpoint_id for d in to_a.items} == {a}
    pending_b = await store.list_deliveries(org, limit=50, endpoint_id=b, status=PENDING)
    assert all(d.endpoint_id == b and d.status is PENDING for d in pending_b.items)
    with pytest.raises(InvalidCursorError):
        await store.list_deliveries(org, limit=3, after="-1")


# -- claim, leases, record -----------------------------------------------------------------------


async def test_claim_hands_out_everything_a_worker_needs(store: Store) -> None:
    org, (endpoint,) = await setup_org(store)
    (delivery_id,) = await publish_one(store, org, new_event("evt_1", "payout.paid", {"x": 1}))
    before = datetime.now(UTC)
    (claimed,) = await store.claim("w1", 10, 30)
    assert claimed.id == delivery_id
    assert claimed.organization_id == org
    assert claimed.event_id == "evt_1"
    assert claimed.event_type == "payout.paid"
    assert claimed.endpoint_id == endpoint
    assert claimed.url == "https://e0.example/hook"
    assert json.loads(claimed.body)["data"] == {"x": 1}
    assert claimed.attempt_number == 1
    assert claimed.round_attempt == 1
    assert before + timedelta(seconds=25) < claimed.lease_expires_at
    assert claimed.lease_expires_at < before + timedelta(seconds=35)
    assert await store.claim("w2", 10, 30) == []  # leased


async def test_claim_respects_limit_due_time_and_exclusions(store: Store) -> None:
    org, (a, b) = await setup_org(store, endpoints=2)
    for n in range(5):
        await store.publish(org, [new_event(f"evt_{n}")])
    assert await store.claim("w", 0, 30) == []
    first = await store.claim("w", 3, 30, exclude_endpoints=[a])
    assert len(first) == 3
    assert {c.endpoint_id for c in first} == {b}
    rest = await store.claim("w", 100, 30)
    assert len(rest) == 7
    assert not ids_of(first) & ids_of(rest)
    # A retry scheduled in the future is not due yet.
    await store.record("w", [outcome(c.id, PENDING, code=500, retry_in=60) for c in first])
    assert await store.claim("w", 100, 30) == []


async def test_expired_lease_is_claimable_and_old_worker_is_ignored(store: Store) -> None:
    org, _ = await setup_org(store)
    (delivery_id,) = await publish_one(store, org, new_event("evt_1"))
    (first,) = await store.claim("w1", 1, 0.2)
    assert await store.claim("w2", 1, 0.2) == []
    await asyncio.sleep(0.3)
    (second,) = await store.claim("w2", 1, 30)
    assert second.id == delivery_id
    assert second.attempt_number == 1
    await store.record("w1", [outcome(delivery_id, SUCCEEDED)])  # w1 lost its lease: ignored
    delivery = await store.get_delivery(org, delivery_id)
    assert delivery.status is PENDING
    assert delivery.attempt_count == 0
    assert delivery.attempts == ()
    await store.record("w2", [outcome(delivery_id, SUCCEEDED)])
    delivery = await store.get_delivery(org, delivery_id)
    assert delivery.status is SUCCEEDED
    assert delivery.attempt_count == 1
    assert first.id == second.id


async def test_concurrent_claimers_never_share_a_delivery(store: Store) -> None:
    org, _ = await setup_org(store, endpoints=3)
    await store.publish(org, [new_event(f"evt_{n}") for n in range(40)])
    batches = await asyncio.gather(*(store.claim(f"w{n}", 7, 30) for n in range(25)))
    claimed = [c.id for batch in batches for c in batch]
    assert len(claimed) == 120
    assert len(set(claimed)) == 120


async def test_record_success_failure_and_retry(store: Store) -> None:
    org, _ = await setup_org(store)
    ok, retry, dead = [(await publish_one(store, org, new_event(f"evt_{n}")))[0] for n in range(3)]
    await store.claim("w", 10, 30)
    await store.record(
        "w",
        [
            outcome(ok, SUCCEEDED),
            outcome(retry, PENDING, code=503, retry_in=0),
            outcome(dead, FAILED, code=None),
        ],
    )
    succeeded = await store.get_delivery(org, ok)
    assert succeeded.status is SUCCEEDED
    assert succeeded.next_attempt_at is None
    (attempt,) = succeeded.attempts
    assert attempt.number == 1
    assert attempt.status_code == 200
    assert attempt.duration_ms == 12.5
    assert attempt.response_excerpt == "ok"
    assert attempt.started_at.tzinfo is not None
    failed = await store.get_delivery(org, dead)
    assert failed.status is FAILED
    assert failed.attempts[0].status_code is None
    assert failed.attempts[0].error == "connect_error"

    (again,) = await store.claim("w", 10, 30)
    assert again.id == retry
    assert again.attempt_number == 2
    assert again.round_attempt == 2
    await store.record("w", [outcome(retry, SUCCEEDED)])
    done = await store.get_delivery(org, retry)
    assert [a.number for a in done.attempts] == [1, 2]
    assert [a.status_code for a in done.attempts] == [503, 200]
    # A second record of the same delivery (lease already gone) changes nothing.
    await store.record("w", [outcome(retry, FAILED)])
    assert (await store.get_delivery(org, retry)).status is SUCCEEDED
    counts = await store.delivery_counts()
    assert counts == {PENDING: 0, SUCCEEDED: 2, FAILED: 1}


async def test_extend_leases_and_release(store: Store) -> None:
    org, _ = await setup_org(store)
    first, second = [(await publish_one(store, org, new_event(f"evt_{n}")))[0] for n in range(2)]
    await store.claim("w1", 10, 0.3)
    await store.extend_leases("w1", [first], 30)
    await store.extend_leases("w2", [second], 30)  # not its lease: ignored
    await asyncio.sleep(0.4)
    assert ids_of(await store.claim("w2", 10, 30)) == {second}

    await store.release("w3", [first])  # not its lease: ignored
    assert await store.claim("w3", 10, 30) == []
    await store.release("w1", [first])
    (back,) = await store.claim("w3", 10, 30)
    assert back.id == first
    assert back.attempt_number == 1


async def test_lease_holders_are_the_workers_with_unexpired_leases(store: Store) -> None:
    org, _ = await setup_org(store, endpoints=2)
    await store.publish(org, [new_event(f"evt_{n}") for n in range(3)])
    assert await store.lease_holders() == []
    b_claims = await store.claim("w-b", 2, 30)
    await store.claim("w-a", 2, 30)
    short = await store.claim("w-short", 10, 0.2)
    assert len(short) == 2
    assert await store.lease_holders() == ["w-a", "w-b", "w-short"]
    await asyncio.sleep(0.3)
    assert await store.lease_holders() == ["w-a", "w-b"]  # w-short's leases ran out
    held = await store.claim("w-c", 10, 30)  # and another worker took them
    assert ids_of(held) == ids_of(short)
    assert await store.lease_holders() == ["w-a", "w-b", "w-c"]
    # A recorded outcome ends the lease, whatever the outcome.
    await store.record(
        "w-b", [outcome(b_claims[0].id, SUCCEEDED), outcome(b_claims[1].id, PENDING, retry_in=0)]
    )
    assert await store.lease_holders() == ["w-a", "w-c"]


async def test_release_worker_makes_its_deliveries_due_at_once(store: Store) -> None:
    org, _ = await setup_org(store, endpoints=2)
    await store.publish(org, [new_event(f"evt_{n}") for n in range(3)])
    dead = await store.claim("w-dead", 5, 60)
    assert len(dead) == 5
    (other,) = await store.claim("w-live", 1, 60)
    assert await store.claim("w-new", 10, 60) == []  # all leased
    assert await store.release_worker("w-unknown") == 0
    assert await store.release_worker("w-dead") == 5
    assert await store.lease_holders() == ["w-live"]
    assert await store.release_worker("w-dead") == 0  # nothing left to give back
    again = await store.claim("w-new", 10, 60)
    assert ids_of(again) == ids_of(dead)
    # Released, not attempted: same attempt number, no attempt recorded.
    assert {c.attempt_number for c in again} == {1}
    for claimed in again:
        delivery = await store.get_delivery(org, claimed.id)
        assert delivery.attempt_count == 0
        assert delivery.attempts == ()
    # The dead worker's late outcome is ignored: the lease is no longer its own.
    await store.record("w-dead", [outcome(dead[0].id, SUCCEEDED)])
    assert (await store.get_delivery(org, dead[0].id)).status is PENDING
    # The live worker's lease was left alone.
    await store.record("w-live", [outcome(other.id, SUCCEEDED)])
    assert (await store.get_delivery(org, other.id)).status is SUCCEEDED


async def test_release_worker_leaves_finished_and_retrying_deliveries_alone(
    store: Store,
) -> None:
    org, _ = await setup_org(store)
    await store.publish(org, [new_event(f"evt_{n}") for n in range(3)])
    done, retrying, held = await store.claim("w-dead", 3, 60)
    await store.record(
        "w-dead", [outcome(done.id, SUCCEEDED), outcome(retrying.id, PENDING, retry_in=600)]
    )
    assert await store.release_worker("w-dead") == 1  # only the lease still held
    assert (await store.get_delivery(org, done.id)).status is SUCCEEDED
    waiting = await store.get_delivery(org, retrying.id)
    assert waiting.next_attempt_at is not None
    assert waiting.next_attempt_at > datetime.now(UTC) + timedelta(seconds=500)
    (claimed,) = await store.claim("w-new", 10, 60)
    assert claimed.id == held.id


async def test_retry_delivery_starts_a_new_round(store: Store) -> None:
    org, _ = await setup_org(store)
    (delivery_id,) = await publish_one(store, org, new_event("evt_1"))
    with pytest.raises(StoreError):
        await store.retry_delivery(org, delivery_id)  # pending: nothing to retry
    for attempt in range(3):
        (claimed,) = await store.claim("w", 1, 30)
        assert claimed.round_attempt == attempt + 1
        final = attempt == 2
        await store.record(
            "w", [outcome(delivery_id, FAILED if final else PENDING, code=500, retry_in=0)]
        )
    assert (await store.get_delivery(org, delivery_id)).status is FAILED
    retried = await store.retry_delivery(org, delivery_id)
    assert retried.status is PENDING
    assert retried.attempt_count == 3
    assert retried.next_attempt_at is not None
    assert retried.next_attempt_at <= datetime.now(UTC) + timedelta(seconds=1)
    (claimed,) = await store.claim("w", 1, 30)
    assert claimed.attempt_number == 4
    assert claimed.round_attempt == 1
    await store.record("w", [outcome(delivery_id, SUCCEEDED)])
    with pytest.raises(StoreError):
        await store.retry_delivery(org, delivery_id)  # succeeded
    with pytest.raises(NotFoundError):
        await store.retry_delivery(org, "dlv_missing")


async def test_a_retry_waits_while_a_later_delivery_of_its_key_is_attempted(
    store: Store,
) -> None:
    # The retried delivery would be the head of its key at once, beside the later delivery of
    # the key in flight: two at a time to one endpoint. The retry is refused until it ends.
    org, _ = await setup_org(store)
    first, later = [
        (await publish_one(store, org, new_event(f"evt_{n}", ordering_key="cus_1")))[0]
        for n in range(2)
    ]
    (claimed,) = await store.claim("w", 10, 30)
    assert claimed.id == first
    await store.record("w", [outcome(first, FAILED, code=500)])
    (claimed,) = await store.claim("w", 10, 30)
    assert claimed.id == later  # now in flight
    with pytest.raises(StoreError, match="being attempted"):
        await store.retry_delivery(org, first)
    assert (await store.get_delivery(org, first)).status is FAILED  # nothing changed
    await store.record("w", [outcome(later, SUCCEEDED)])
    assert (await store.retry_delivery(org, first)).status is PENDING
    (claimed,) = await store.claim("w", 10, 30)
    assert claimed.id == first


async def test_a_retry_behind_an_earlier_delivery_of_its_key_in_flight_waits_its_turn(
    store: Store,
) -> None:
    # The earlier delivery in flight is the key's head: the retried later one is not, so it
    # is accepted, and waits until that attempt ends (it was refused as if it were later).
    org, _ = await setup_org(store)
    first, later = [
        (await publish_one(store, org, new_event(f"evt_{n}", ordering_key="cus_1")))[0]
        for n in range(2)
    ]
    for delivery_id in (first, later):  # both fail, in the key's order
        (claimed,) = await store.claim("w", 10, 30)
        assert claimed.id == delivery_id
        await store.record("w", [outcome(delivery_id, FAILED, code=500)])
    await store.retry_delivery(org, first)
    (claimed,) = await store.claim("w", 10, 30)
    assert claimed.id == first  # now in flight
    retried = await store.retry_delivery(org, later)
    assert retried.status is PENDING
    assert await store.claim("w", 10, 30) == []  # behind the head: one at a time
    await store.record("w", [outcome(first, SUCCEEDED)])
    (claimed,) = await store.claim("w", 10, 30)
    assert claimed.id == later
    assert claimed.round_attempt == 1


async def test_next_due_at_and_wait_for_work(store: Store) -> None:
    assert await store.next_due_at() is None
    org, _ = await setup_org(store)
    start = time.monotonic()
    await store.wait_for_work(0.05)  # nothing to wait for: returns after max_wait
    assert time.monotonic() - start < 1

    waiter = asyncio.create_task(store.wait_for_work(5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    (delivery_id,) = await publish_one(store, org, new_event("evt_1"))
    await asyncio.wait_for(waiter, 1)  # woken by the publish, not by the 5 s timeout

    due = await store.next_due_at()
    assert due is not None
    assert due <= datetime.now(UTC)
    await store.claim("w", 1, 30)
    await store.record("w", [outcome(delivery_id, PENDING, code=500, retry_in=60)])
    due = await store.next_due_at()
    assert due is not None
    assert datetime.now(UTC) + timedelta(seconds=50) < due
    assert due < datetime.now(UTC) + timedelta(seconds=70)


async def test_disabled_endpoint_holds_its_pending_deliveries(store: Store) -> None:
    org, (endpoint,) = await setup_org(store)
    (delivery_id,) = await publish_one(store, org, new_event("evt_1"))
    await store.update_endpoint(org, endpoint, enabled=False)
    assert await store.claim("w", 10, 30) == []
    assert (await store.get_delivery(org, delivery_id)).status is PENDING
    await store.update_endpoint(org, endpoint, enabled=True)
    assert ids_of(await store.claim("w", 10, 30)) == {delivery_id}


# -- fairness and ordering keys ------------------------------------------------------------------


async def test_one_organizations_backlog_does_not_delay_another(store: Store) -> None:
    busy, _ = await setup_org(store, "busy")
    quiet, _ = await setup_org(store, "quiet")
    for start in range(0, 5000, 1000):
        await store.publish(busy, [new_event(f"evt_{n}") for n in range(start, start + 1000)])
    (late,) = await publish_one(store, quiet, new_event("evt_quiet"))
    batch = await store.claim("w", 10, 30)
    assert len(batch) == 10
    assert late in ids_of(batch)
    # And the backlog keeps its own order: its oldest deliveries go first.
    from_busy = [c.event_id for c in batch if c.organization_id == busy]
    assert from_busy == [f"evt_{n}" for n in range(len(from_busy))]


async def test_small_claims_take_turns_across_many_organizations(store: Store) -> None:
    orgs = [(await setup_org(store, f"org {n}"))[0] for n in range(15)]
    for org in orgs:
        await store.publish(org, [new_event(f"evt_{n}") for n in range(3)])
    served: list[set[str]] = []
    for _ in range(3):
        batch = await store.claim("w", 5, 30)
        assert len(batch) == 5
        served.append({c.organization_id for c in batch})
    # Three claims of five reach all fifteen organizations: nobody waits for a second turn.
    assert set().union(*served) == set(orgs)


async def test_claim_cost_does_not_grow_with_the_backlog(store: Store) -> None:
    org, (slow,) = await setup_org(store)
    for start in range(0, 100_000, 5000):
        await store.publish(org, [new_event(f"evt_{n}") for n in range(start, start + 5000)])
    other = (await store.create_endpoint(org, "https://other.example", None, None)).id
    await publish_one(store, org, new_event("evt_last"))  # to both endpoints

    timings = []
    started = time.perf_counter()
    claimed = await store.claim("w", 10, 30, exclude_endpoints=[slow])
    timings.append(time.perf_counter() - started)
    assert [c.endpoint_id for c in claimed] == [other]
    for n in range(5):
        started = time.perf_counter()
        claimed = await store.claim(f"w{n}", 10, 30)
        timings.append(time.perf_counter() - started)
        assert len(claimed) == 10
        assert {c.endpoint_id for c in claimed} == {slow}
    assert sorted(timings)[len(timings) // 2] < 0.05, timings


async def test_ordering_key_serializes_deliveries(store: Store) -> None:
    org, (_endpoint,) = await setup_org(store)
    keyed = [
        (await publish_one(store, org, new_event(f"evt_k{n}", ordering_key="customer-1")))[0]
        for n in range(3)
    ]
    (other_key,) = await publish_one(store, org, new_event("evt_o", ordering_key="customer-2"))
    free = [(await publish_one(store, org, new_event(f"evt_f{n}")))[0] for n in range(2)]

    first = await store.claim("w", 100, 30)
    assert ids_of(first) == {keyed[0], other_key, *free}
    assert await store.claim("w", 100, 30) == []

    # A head that will be retried later still holds its key.
    await store.record("w", [outcome(keyed[0], PENDING, code=500, retry_in=60)])
    assert await store.claim("w", 100, 30) == []
    await store.record("w", [outcome(other_key, SUCCEEDED)])
    assert await store.claim("w", 100, 30) == []
    await store.release("w", [keyed[0]])  # not leased any more: ignored, still waits 60 s
    assert await store.claim("w", 100, 30) == []


async def test_ordering_key_head_releases_the_next_when_it_ends(store: Store) -> None:
    org, (_endpoint,) = await setup_org(store)
    k = [
        (await publish_one(store, org, new_event(f"evt_{n}", ordering_key="k")))[0]
        for n in range(3)
    ]
    (head,) = await store.claim("w", 10, 30)
    assert head.id == k[0]
    await store.record("w", [outcome(k[0], PENDING, code=500, retry_in=0)])
    (head,) = await store.claim("w", 10, 30)
    assert head.id == k[0]
    assert head.attempt_number == 2
    await store.record("w", [outcome(k[0], FAILED, code=500)])
    (head,) = await store.claim("w", 10, 30)
    assert head.id == k[1]
    await store.record("w", [outcome(k[1], SUCCEEDED)])
    (head,) = await store.claim("w", 10, 30)
    assert head.id == k[2]

    # A manual retry of the failed first one puts it back at the head of its key.
    await store.record("w", [outcome(k[2], PENDING, code=500, retry_in=0)])
    await store.retry_delivery(org, k[0])
    (head,) = await store.claim("w", 10, 30)
    assert head.id == k[0]
    assert head.round_attempt == 1
    await store.record("w", [outcome(k[0], SUCCEEDED)])
    (head,) = await store.claim("w", 10, 30)
    assert head.id == k[2]


async def test_ordering_keys_are_per_endpoint(store: Store) -> None:
    org, (a, b) = await setup_org(store, endpoints=2)
    await store.publish(org, [new_event(f"evt_{n}", ordering_key="k") for n in range(3)])
    claimed = await store.claim("w", 10, 30)
    assert sorted(c.endpoint_id for c in claimed) == sorted([a, b])
    assert {c.event_id for c in claimed} == {"evt_0"}


# -- tenant isolation ----------------------------------------------------------------------------


async def test_organizations_cannot_see_each_other(store: Store) -> None:
    mine, (endpoint,) = await setup_org(store, "mine")
    theirs = (await store.create_organization("theirs")).id
    (delivery_id,) = await publish_one(store, mine, new_event("evt_1"))
    key = await store.create_key(mine, b"cipher", activate=True)

    with pytest.raises(NotFoundError):
        await store.get_endpoint(theirs, endpoint)
    with pytest.raises(NotFoundError):
        await store.update_endpoint(theirs, endpoint, enabled=False)
    with pytest.raises(NotFoundError):
        await store.delete_endpoint(theirs, endpoint)
    with pytest.raises(NotFoundError):
        await store.get_event(theirs, "evt_1")
    with pytest.raises(NotFoundError):
        await store.get_delivery(theirs, delivery_id)
    with pytest.raises(NotFoundError):
        await store.retry_delivery(theirs, delivery_id)
    with pytest.raises(NotFoundError):
        await store.activate_key(theirs, key.id)
    assert (await store.list_events(theirs, limit=10)).items == ()
    assert (await store.list_deliveries(theirs, limit=10)).items == ()
    assert (await store.list_endpoints(theirs, limit=10)).items == ()
    assert await store.list_keys(theirs) == []
    # The same event id is free in another organization.
    (result,) = await store.publish(theirs, [new_event("evt_1", data={"other": True})])
    assert result.created is True
    assert result.event.deliveries == ()
    assert (await store.get_endpoint(mine, endpoint)).enabled is True
