"""The SQLite writer's short cuts keep every guarantee of the slow paths they replace.

``record`` finds a claimed delivery by the seq its claim remembered (``Leases``) and checks the
lease in the writing statements themselves; a delivery it does not know is looked up by id.
A claim returns its records from the leasing statement and builds them without the
dataclass ``__init__``. A lone job commits without a SAVEPOINT. Each test here would fail if
one of those short cuts lost what the general suite (test_store.py) asks of the slow path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ascend_webhooks.store.models import (
    Attempt,
    AttemptOutcome,
    ClaimedDelivery,
    DeliveryStatus,
    NewEvent,
)
from ascend_webhooks.store.sqlite import SQLiteStore

PENDING, SUCCEEDED, FAILED = DeliveryStatus.PENDING, DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED


def event(event_id: str, ordering_key: str | None = None) -> NewEvent:
    body = json.dumps({"id": event_id}).encode()
    digest = hashlib.sha256(body + (ordering_key or "").encode()).digest()
    return NewEvent(event_id, "invoice.paid", body, digest, ordering_key)


def outcome(
    delivery_id: str, status: DeliveryStatus, retry_in: float | None = None
) -> AttemptOutcome:
    now = datetime.now(UTC)
    return AttemptOutcome(
        delivery_id,
        Attempt(0, now, 3.0, 200 if status is SUCCEEDED else 500, None, "x"),
        status,
        None if retry_in is None else now + timedelta(seconds=retry_in),
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "writer.db"


async def opened(path: Path) -> SQLiteStore:
    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()
    return store


async def setup(store: SQLiteStore, endpoints: int = 1) -> tuple[str, list[str]]:
    org = await store.create_organization("acme")
    ids = []
    for n in range(endpoints):
        ids.append((await store.create_endpoint(org.id, f"https://e{n}.example/", None, None)).id)
    return org.id, ids


def known(store: SQLiteStore) -> dict[str, tuple[int, str, str | None]]:
    return store._claimer.leases.known


def attempts(path: Path, delivery_id: str) -> list[tuple[int, int | None]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT a.number, a.status_code FROM attempts a JOIN deliveries d"
            " ON d.seq = a.delivery_seq WHERE d.id = ? ORDER BY a.number",
            (delivery_id,),
        ).fetchall()
    finally:
        conn.close()


async def test_a_claim_builds_the_same_records_as_the_dataclass(path: Path) -> None:
    store = await opened(path)
    try:
        org, (a, b) = await setup(store, endpoints=2)
        results = await store.publish(org, [event("evt_1"), event("evt_2")])
        claimed = await store.claim("w", 10, 30)
        assert len(claimed) == 4
        by_id = {d.id: d for r in results for d in r.event.deliveries}
        bodies = {r.event.id: r.event.body for r in results}
        for one in claimed:
            expected = ClaimedDelivery(
                id=one.id,
                organization_id=org,
                event_id=by_id[one.id].event_id,
                event_type="invoice.paid",
                endpoint_id=by_id[one.id].endpoint_id,
                url="https://e0.example/"
                if by_id[one.id].endpoint_id == a
                else "https://e1.example/",
                body=bodies[by_id[one.id].event_id],
                attempt_number=1,
                round_attempt=1,
                lease_expires_at=one.lease_expires_at,
            )
            assert one == expected
            assert hash(one) == hash(expected)
            assert isinstance(one.body, bytes)
        # In the order of acceptance within each endpoint.
        for endpoint in (a, b):
            events = [c.event_id for c in claimed if c.endpoint_id == endpoint]
            assert events == ["evt_1", "evt_2"]
        assert set(known(store)) == {c.id for c in claimed}
    finally:
        await store.close()


async def test_record_by_seq_refuses_an_outcome_whose_lease_went_elsewhere(path: Path) -> None:
    store = await opened(path)
    try:
        org, _ = await setup(store)
        await store.publish(org, [event("evt_1"), event("evt_2", "k"), event("evt_3", "k")])
        first = await store.claim("w1", 10, 0.05)
        assert {c.event_id for c in first} == {"evt_1", "evt_2"}
        await asyncio.sleep(0.1)
        second = await store.claim("w2", 10, 30)
        assert {c.id for c in second} == {c.id for c in first}
        # w1 lost both leases: its outcomes (one plain, one with an ordering key) write nothing
        # and unblock nothing, though the claim remembered both seqs.
        await store.record("w1", [outcome(c.id, SUCCEEDED) for c in first])
        for one in first:
            delivery = await store.get_delivery(org, one.id)
            assert delivery.status is PENDING
            assert delivery.attempts == ()
            assert attempts(path, one.id) == []
        assert await store.claim("w3", 10, 30) == []  # evt_3 still waits behind evt_2
        await store.record("w2", [outcome(c.id, SUCCEEDED) for c in second])
        for one in second:
            assert (await store.get_delivery(org, one.id)).status is SUCCEEDED
            assert attempts(path, one.id) == [(1, 200)]
        (third,) = await store.claim("w3", 10, 30)
        assert third.event_id == "evt_3"
        assert known(store).keys() == {third.id}  # recorded ones were forgotten
    finally:
        await store.close()


async def test_a_delivery_claimed_by_another_store_is_recorded_by_id(path: Path) -> None:
    claiming, recording = await opened(path), await opened(path)
    try:
        org, _ = await setup(claiming)
        await claiming.publish(org, [event("evt_1"), event("evt_2", "k"), event("evt_3", "k")])
        claimed = await claiming.claim("w", 10, 30)
        assert len(claimed) == 2
        assert known(recording) == {}
        await recording.record("w", [outcome(c.id, SUCCEEDED) for c in claimed])
        for one in claimed:
            assert (await claiming.get_delivery(org, one.id)).status is SUCCEEDED
            assert attempts(path, one.id) == [(1, 200)]
        (last,) = await claiming.claim("w", 10, 30)  # the key's next was unblocked
        assert last.event_id == "evt_3"
        # Another worker id on the fallback path is refused as on the fast one.
        await recording.record("other", [outcome(last.id, FAILED)])
        assert (await claiming.get_delivery(org, last.id)).status is PENDING
    finally:
        await claiming.close()
        await recording.close()


async def test_one_call_mixing_kinds_of_outcome(path: Path) -> None:
    store = await opened(path)
    try:
        org, _ = await setup(store)
        await store.publish(
            org,
            [event("evt_p"), event("evt_r"), event("evt_k1", "k"), event("evt_k2", "k")],
        )
        claimed = {c.event_id: c.id for c in await store.claim("w", 10, 30)}
        assert set(claimed) == {"evt_p", "evt_r", "evt_k1"}
        unknown = "dlv_" + "0" * 26
        await store.record(
            "w",
            [
                outcome(claimed["evt_p"], SUCCEEDED),
                outcome(claimed["evt_r"], PENDING, retry_in=0),
                outcome(unknown, SUCCEEDED),  # no such delivery: ignored
                outcome(claimed["evt_k1"], FAILED),
                outcome(claimed["evt_r"], SUCCEEDED),  # twice in one call: one after the other
            ],
        )
        retried = await store.get_delivery(org, claimed["evt_r"])
        # The second outcome of evt_r found its lease gone (the first released it).
        assert retried.status is PENDING
        assert [a.number for a in retried.attempts] == [1]
        assert (await store.get_delivery(org, claimed["evt_p"])).status is SUCCEEDED
        assert (await store.get_delivery(org, claimed["evt_k1"])).status is FAILED
        again = {c.event_id: c for c in await store.claim("w", 10, 30)}
        assert set(again) == {"evt_r", "evt_k2"}
        assert again["evt_r"].attempt_number == 2
        assert again["evt_r"].round_attempt == 2
    finally:
        await store.close()


async def test_release_forgets_and_a_retry_is_recorded_under_its_next_number(path: Path) -> None:
    store = await opened(path)
    try:
        org, _ = await setup(store)
        await store.publish(org, [event("evt_1")])
        (one,) = await store.claim("w", 10, 30)
        await store.release("w", [one.id])
        assert known(store) == {}
        (one,) = await store.claim("w", 10, 30)
        assert one.attempt_number == 1
        await store.record("w", [outcome(one.id, PENDING, retry_in=0)])
        (one,) = await store.claim("w", 10, 30)
        assert one.attempt_number == 2
        await store.record("w", [outcome(one.id, FAILED)])
        assert attempts(path, one.id) == [(1, 500), (2, 500)]
        await store.retry_delivery(org, one.id)
        (one,) = await store.claim("w", 10, 30)
        assert (one.attempt_number, one.round_attempt) == (3, 1)
    finally:
        await store.close()


async def test_a_failing_lone_write_leaves_nothing_and_the_next_commits(path: Path) -> None:
    store = await opened(path)
    try:
        org, _ = await setup(store)

        def half_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO organizations VALUES ('org_half', 'half', 0)")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await store._engine.submit(half_then_fail, durable=False)
        with pytest.raises(RuntimeError, match="boom"):
            await store._engine.submit(half_then_fail)
        names = await store._engine.read(
            lambda c: [row[0] for row in c.execute("SELECT id FROM organizations")]
        )
        assert names == [org]
        assert (await store.create_organization("next")).name == "next"
        conn = store._engine._write_conn
        assert conn is not None
        assert not conn.in_transaction
    finally:
        await store.close()


@pytest.mark.parametrize("json_path", [True, False])
async def test_outcomes_are_stored_exactly_by_either_statement_shape(
    path: Path, json_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ascend_webhooks.store.sqlite import _writes

    monkeypatch.setattr(_writes, "_json_path", [json_path])
    documents: list[str] = []
    dumps = _writes._dumps

    def spy(rows: object) -> str:
        documents.append(dumps(rows))
        return documents[-1]

    monkeypatch.setattr(_writes, "_dumps", spy)
    store = await opened(path)
    try:
        org, _ = await setup(store)
        await store.publish(org, [event(f"evt_{n}") for n in range(5)])
        claimed = await store.claim("w", 10, 30)
        started = datetime(2026, 1, 2, 3, 4, 5, 678_999, tzinfo=UTC)
        retry_at = datetime(2030, 1, 1, 0, 0, 0, 1_999, tzinfo=UTC)
        texts = [
            ("status_500", 'ünïcode "quoted" \\ back\nslash 😀'),
            ("connect_error", "has a \x00 NUL inside"),  # JSON text cannot carry it
            (None, None),
            ("timeout", ""),
            ("status_503", "x" * 2000),
        ]
        durations = [0.1 + 0.2, float("inf"), 12.5, 1e-9, 29_999.999]
        outcomes = []
        for n, one in enumerate(claimed):
            error, excerpt = texts[n]
            status = [FAILED, SUCCEEDED, PENDING, PENDING, FAILED][n]
            outcomes.append(
                AttemptOutcome(
                    one.id,
                    Attempt(0, started, durations[n], None if error else 200, error, excerpt),
                    status,
                    retry_at if n == 2 else None,
                )
            )
        before = datetime.now(UTC)
        # The NUL and the infinite duration apart: each sends its call to executemany.
        await store.record("w", [outcomes[n] for n in (0, 2, 3, 4)])
        assert len(documents) == (1 if json_path else 0)
        await store.record("w", [outcomes[1]])
        for n, one in enumerate(claimed):
            delivery = await store.get_delivery(org, one.id)
            (attempt,) = delivery.attempts
            assert attempt.number == 1
            assert attempt.started_at == datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
            assert attempt.duration_ms == durations[n]
            assert (attempt.error, attempt.response_excerpt) == texts[n]
            assert attempt.status_code == (None if texts[n][0] else 200)
            assert delivery.status is outcomes[n].status
            assert delivery.attempt_count == 1
        retried = await store.get_delivery(org, claimed[2].id)
        assert retried.next_attempt_at == datetime(2030, 1, 1, 0, 0, 0, 1_000, tzinfo=UTC)
        now_due = await store.get_delivery(org, claimed[3].id)
        assert now_due.next_attempt_at is not None
        assert before - timedelta(seconds=1) < now_due.next_attempt_at
        (again,) = await store.claim("w", 10, 30)
        assert again.id == claimed[3].id
        assert again.attempt_number == 2
    finally:
        await store.close()


async def test_publish_results_are_plain_records_whichever_path_built_them(path: Path) -> None:
    from ascend_webhooks.store.models import PublishResult

    store = await opened(path)
    try:
        org, (a, b) = await setup(store, endpoints=2)
        await store.update_endpoint(org, b, event_types=["other.type"])
        fresh = await store.publish(org, [event("evt_1"), event("evt_2")])  # the one-pass path
        again = await store.publish(org, [event("evt_3"), event("evt_1"), event("evt_3")])
        for result in (*fresh, *again):
            assert type(result) is PublishResult
            assert result == PublishResult(result.event, result.created)
            assert hash(result) == hash(PublishResult(result.event, result.created))
            assert [d.endpoint_id for d in result.event.deliveries] == [a]  # b wants other.type
        assert [r.created for r in fresh] == [True, True]
        assert [r.created for r in again] == [True, False, False]
        assert again[1].event == fresh[0].event
        assert again[2].event == again[0].event
    finally:
        await store.close()


async def test_claim_takes_no_more_of_an_endpoint_than_the_room_given(path: Path) -> None:
    store = await opened(path)
    try:
        org, (a, b, c) = await setup(store, endpoints=3)
        await store.publish(org, [event(f"evt_{n}") for n in range(5)])

        def per(claimed: list[ClaimedDelivery]) -> dict[str, int]:
            return {e: sum(1 for d in claimed if d.endpoint_id == e) for e in (a, b, c)}

        got = await store.claim("w", 100, 30, endpoint_room={a: 2}, per_endpoint=1)
        assert per(got) == {a: 2, b: 1, c: 1}
        # Oldest first within an endpoint, as without bounds.
        assert [d.event_id for d in got if d.endpoint_id == a] == ["evt_0", "evt_1"]
        got = await store.claim("w", 100, 30, endpoint_room={a: 0, b: 5}, per_endpoint=0)
        assert per(got) == {a: 0, b: 4, c: 0}
        assert await store.claim("w", 100, 30, endpoint_room={b: 3}, per_endpoint=0) == []
        got = await store.claim("w", 2, 30, endpoint_room={a: 5})  # limit still bounds
        assert per(got) == {a: 1, b: 0, c: 1}  # shared across the endpoints as ever
        got = await store.claim("w", 100, 30, exclude_endpoints=[c], endpoint_room={c: 9})
        assert per(got) == {a: 2, b: 0, c: 0}
        got = await store.claim("w", 100, 30)
        assert per(got) == {a: 0, b: 0, c: 3}
    finally:
        await store.close()


async def test_the_walk_resumes_after_a_capped_pass_and_takes_turns(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ascend_webhooks.store.sqlite import _claim

    monkeypatch.setattr(_claim, "_MAX_PAIRS", 2)
    store = await opened(path)
    try:
        orgs = []
        for n in range(4):
            org = await store.create_organization(f"org {n}")
            for e in range(2 if n == 0 else 1):
                await store.create_endpoint(org.id, f"https://o{n}e{e}.example/", None, None)
            await store.publish(org.id, [event(f"evt_{n}_{k}") for k in range(3)])
            orgs.append(org.id)
        first, second, third, fourth = sorted(orgs)
        two_endpoints = orgs[0]
        # A pass stops once it has seen 2 pairs, after a whole organization.
        seen = []
        for _ in range(4):
            claimed = await store.claim("w", 100, 30)
            seen.append(sorted({c.organization_id for c in claimed}))
        expected_passes = []
        pending = [first, second, third, fourth]
        while pending:
            taken = []
            pairs = 0
            while pending and pairs < 2:
                org_id = pending.pop(0)
                taken.append(org_id)
                pairs += 2 if org_id == two_endpoints else 1
            expected_passes.append(sorted(taken))
        assert seen[: len(expected_passes)] == expected_passes
        assert all(not s for s in seen[len(expected_passes) :])
    finally:
        await store.close()


async def test_claims_of_one_take_turns_across_organizations_and_endpoints(path: Path) -> None:
    store = await opened(path)
    try:
        orgs = {}
        for n in range(3):
            org = await store.create_organization(f"org {n}")
            endpoints = [
                (await store.create_endpoint(org.id, f"https://o{n}e{e}.example/", None, None)).id
                for e in range(2)
            ]
            await store.publish(org.id, [event(f"evt_{n}_{k}") for k in range(2)])
            orgs[org.id] = endpoints
        order = [(await store.claim("w", 1, 30))[0] for _ in range(12)]
        assert await store.claim("w", 1, 30) == []
        served = [c.organization_id for c in order]
        ids = sorted(orgs)
        assert served == ids * 4  # one at a time, in turn, whatever each one's backlog
        for org_id, endpoints in orgs.items():
            mine = [c for c in order if c.organization_id == org_id]
            assert sorted(c.endpoint_id for c in mine) == sorted(endpoints * 2)
    finally:
        await store.close()


@asynccontextmanager
async def writer_lock_held_elsewhere(path: Path) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Another process holds the store's writer lock; the block gets the function that frees it."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD_WRITER_LOCK, f"{path}-writer",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None
    assert holder.stdin is not None
    stdin = holder.stdin

    async def release() -> None:
        stdin.write(b"release\n")
        await stdin.drain()
        assert await asyncio.wait_for(holder.wait(), 10) == 0

    try:
        assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"held\n"
        yield release
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


async def test_writers_of_other_processes_wait_on_the_writer_lock(path: Path) -> None:
    # Another process's writer holds the lock: this one's transaction waits, without SQLite's
    # sleeping busy loop, and runs as soon as the lock is let go.
    store = await opened(path)
    try:
        async with writer_lock_held_elsewhere(path) as release:
            created = asyncio.create_task(store.create_organization("Acme"))
            await asyncio.sleep(0.3)
            assert not created.done()  # waits for the other process
            await release()
            organization = await asyncio.wait_for(created, 5)
        assert (await store.get_organization(organization.id)).name == "Acme"
    finally:
        await store.close()


async def test_a_writer_lock_held_past_the_busy_timeout_fails_the_write_not_the_store(
    path: Path,
) -> None:
    # A process that stopped while holding the lock: the write fails after busy_timeout, as
    # it would on SQLite's own lock (503 from the API), and the store works once it is free.
    from ascend_webhooks.store.base import StoreUnavailableError

    store = SQLiteStore(f"sqlite:///{path}?busy_timeout=300")
    await store.open()
    try:
        async with writer_lock_held_elsewhere(path) as release:
            with pytest.raises(StoreUnavailableError, match="database is locked"):
                await asyncio.wait_for(store.create_organization("late"), 10)
            await release()
        created = await asyncio.wait_for(store.create_organization("after"), 5)
        assert (await store.get_organization(created.id)).name == "after"
        assert [o.name for o in (await store.list_organizations(limit=10)).items] == ["after"]
    finally:
        await store.close()
    # The thread that waited for the lock ends with the store.
    await asyncio.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name == "ascend-webhooks-sqlite-lock"]


_HOLD_WRITER_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
fcntl.flock(fd, fcntl.LOCK_UN)
"""


@pytest.mark.parametrize("count", [1, 3, 63, 64, 100, 1000, 1100])
async def test_every_row_of_a_publish_is_stored_whatever_its_size(path: Path, count: int) -> None:
    # The rows go in by multi-row INSERTs (``statement_sizes``): parts of up to 1,024 rows in
    # multiples of 64, the rest halving; each count here (x 2 endpoints for the deliveries)
    # splits differently, 1,100 past one statement's most for both tables.
    store = await opened(path)
    try:
        org, (a, b) = await setup(store, endpoints=2)
        events = [event(f"evt_{n}", "k" if n % 7 == 0 else None) for n in range(count)]
        results = await store.publish(org, events)
        assert all(result.created for result in results)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        stored = conn.execute(
            "SELECT id, body, content_hash, ordering_key FROM events ORDER BY seq"
        ).fetchall()
        assert stored == [(new.id, new.body, new.content_hash, new.ordering_key) for new in events]
        pairs = conn.execute(
            "SELECT e.id, d.endpoint_id, d.blocked FROM deliveries d"
            " JOIN events e ON e.seq = d.event_seq ORDER BY d.seq"
        ).fetchall()
    finally:
        conn.close()
    assert sorted((event_id, endpoint) for event_id, endpoint, _ in pairs) == sorted(
        (new.id, endpoint) for new in events for endpoint in (a, b)
    )
    # Only the first delivery of the ordering key to each endpoint may go; the rest wait.
    assert (
        sum(1 for _, _, blocked in pairs if not blocked)
        == 2 * (count - len([new for new in events if new.ordering_key])) + 2
    )


def _temporary_files() -> list[str]:
    """SQLite's temporary files open in this process (``etilqs_*``, unlinked; Linux /proc)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            if "etilqs_" in os.readlink(f"/proc/self/fd/{fd}"):
                found.append(fd)
    return found


async def test_a_grouped_publish_keeps_its_statement_journal_in_memory(path: Path) -> None:
    # Publishes grouped into one transaction run under a SAVEPOINT; with the default temp
    # store SQLite wrote that statement journal to a file it created and unlinked for almost
    # every such transaction (five system calls, a tenth of a small publish's cost).
    store = await opened(path)
    try:
        org, _ = await setup(store, endpoints=2)
        gate = threading.Event()
        blocker = asyncio.ensure_future(store._write(lambda conn: gate.wait(10)))
        await asyncio.sleep(0.05)  # the writer is inside the blocker: the rest queue up
        publishes = [
            asyncio.ensure_future(store.publish(org, [event(f"evt_{n}")])) for n in range(10)
        ]
        inside = asyncio.ensure_future(store._write(lambda conn: _temporary_files()))
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        for publish in publishes:
            assert (await publish)[0].created
        assert await inside == []  # run in the same transaction, after the grouped publishes
    finally:
        await store.close()
