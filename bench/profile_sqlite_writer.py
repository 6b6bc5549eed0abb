"""What the SQLite writer thread costs per event published, per delivery claimed and recorded.

No HTTP, no API: a real ``SQLiteStore`` on a fresh temporary file (``synchronous=FULL``, as
served), driven by one coroutine that awaits each call before the next, so the writer thread
runs exactly one job per transaction and its CPU clock (``pthread_getcpuclockid`` of that
thread, user + system) read before and after each call is that call's cost: the job, the
engine around it (BEGIN, SAVEPOINTs, PRAGMA switches, COMMIT) and handing the result back.
The writer's Python time is what the event loop thread of the same process waits for (the
GIL), so this is the figure to drive down.

Scenarios, each on a fresh file and repeated ``--runs`` times. Two figures: ``all``, a run's
total CPU over its units (so the WAL checkpoints that some commits run count too), the median
of the runs; ``call``, the median of every call's cost per unit:

* ``publish``: ``store.publish`` of batches of 1,000 events of ~1 KB (as the batch route
  calls it), to one endpoint and to three; µs per event;
* ``claim``: ``store.claim`` of 128 (as the worker asks) from the backlog the first scenario
  published, one organization and endpoint, and also spread over several organizations;
  µs per delivery claimed;
* ``record``: ``store.record`` of those deliveries (all succeeded) in batches of 64 and of
  128; µs per outcome.

``--gil`` measures how much of that CPU the writer spends holding the GIL (what the event
loop of a worker or API process waits for): one run of ``publish`` (1 endpoint), then ``claim``
128 until the backlog is leased, then ``record`` 128 until all are recorded, each phase under
``perf record`` of the writer thread with C call stacks. The sqlite3 module releases the GIL
around ``sqlite3_step`` and ``sqlite3_prepare_v2`` (and, on 3.11, each column's
``sqlite3_column_type``); samples with none of them on the stack are GIL-held. Needs Linux
``perf``.

::

    .venv/bin/python bench/profile_sqlite_writer.py [--batches 20] [--runs 3]
    .venv/bin/python bench/profile_sqlite_writer.py --gil [--batches 20]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ascend_webhooks.store.models import (
    Attempt,
    AttemptOutcome,
    ClaimedDelivery,
    DeliveryStatus,
    NewEvent,
)
from ascend_webhooks.store.sqlite import SQLiteStore

_PUBLISH = 1_000
_CLAIM = 128
_EVENT_TYPE = "invoice.paid"


def _events(tag: str, count: int) -> list[NewEvent]:
    out = []
    for n in range(count):
        event_id = f"evt_{tag}_{n:06d}"
        head = b'{"id":"' + event_id.encode() + b'","type":"invoice.paid","data":{"pad":"'
        body = head + b"x" * (1024 - len(head) - 3) + b'"}}'
        out.append(NewEvent(event_id, _EVENT_TYPE, body, hashlib.sha256(body).digest()))
    return out


class _WriterClock:
    """CPU seconds of the store's writer thread (user + system), read from any thread."""

    def __init__(self, store: SQLiteStore) -> None:
        writer = store._engine._writer
        assert writer is not None
        assert writer.ident is not None
        self._clock = time.pthread_getcpuclockid(writer.ident)

    def now(self) -> float:
        return time.clock_gettime(self._clock)

    async def cost(self, call: Awaitable[Any]) -> tuple[float, Any]:
        started = self.now()
        result = await call
        return self.now() - started, result


async def _store(folder: str, name: str) -> SQLiteStore:
    store = SQLiteStore(f"sqlite:///{Path(folder) / name}")
    await store.open()
    return store


Costs = list[tuple[float, int]]  # (writer CPU seconds, units) of each call


async def _publish_run(
    folder: str, run: int, endpoints: int, organizations: int, batches: int
) -> tuple[Costs, SQLiteStore]:
    """The cost of each batch; the store is returned open, with its backlog."""
    store = await _store(folder, f"bench-{run}-{endpoints}-{organizations}-{time.time_ns()}.db")
    clock = _WriterClock(store)
    orgs = []
    for o in range(organizations):
        org = await store.create_organization(f"bench {o}")
        for e in range(endpoints):
            await store.create_endpoint(org.id, f"http://127.0.0.1:9/{o}/{e}", None, None)
        orgs.append(org.id)
    costs = []
    for batch in range(batches):
        events = _events(f"{run}_{batch}", _PUBLISH)
        seconds, _ = await clock.cost(store.publish(orgs[batch % len(orgs)], events))
        costs.append((seconds, _PUBLISH))
    return costs, store


async def _drain(store: SQLiteStore, record_batch: int) -> tuple[Costs, Costs]:
    """The cost of each claim of 128, and of each record of ``record_batch`` outcomes."""
    clock = _WriterClock(store)
    attempt = Attempt(1, datetime.now(UTC), 1.0, 200, None, None)
    claims: Costs = []
    records: Costs = []
    while True:
        seconds, claimed = await clock.cost(store.claim("bench-worker", _CLAIM, 30.0))
        if not claimed:
            break
        claims.append((seconds, len(claimed)))
        batch: list[ClaimedDelivery] = claimed
        for start in range(0, len(batch), record_batch):
            part = batch[start : start + record_batch]
            outcomes = [AttemptOutcome(c.id, attempt, DeliveryStatus.SUCCEEDED, None) for c in part]
            seconds, _ = await clock.cost(store.record("bench-worker", outcomes))
            records.append((seconds, len(part)))
    return claims, records


def _clear(folder: str) -> None:
    for path in Path(folder).iterdir():
        path.unlink()


async def run(batches: int, runs: int, organizations: int) -> None:
    print(
        f"== SQLite writer thread CPU µs per unit, {runs} runs, batches of {_PUBLISH:,} "
        f"events of 1 KB, claims of {_CLAIM} =="
    )
    print("   (all: a run's total CPU / its units, median of the runs, so that checkpoints count;")
    print("    call: the median call of all runs)")
    rows: dict[str, tuple[list[float], list[float]]] = {}

    def add(name: str, costs: Costs) -> None:
        totals, calls = rows.setdefault(name, ([], []))
        totals.append(sum(c for c, _ in costs) / sum(n for _, n in costs) * 1e6)
        calls.extend(c / n * 1e6 for c, n in costs)

    with tempfile.TemporaryDirectory() as folder:
        for r in range(runs):
            for record_batch in (128, 64):
                costs, store = await _publish_run(folder, r, 1, 1, batches)
                add("publish, 1 endpoint         per event", costs)
                claims, records = await _drain(store, record_batch)
                add("claim 128, 1 org, 1 endpoint per delivery", claims)
                add(f"record {record_batch:3d}                  per outcome", records)
                await store.close()
            costs, store = await _publish_run(folder, r, 3, 1, batches)
            add("publish, 3 endpoints        per event", costs)
            await store.close()
            _, store = await _publish_run(folder, r, 1, organizations, organizations)
            claims, _ = await _drain(store, _CLAIM)
            add(f"claim 128, {organizations} orgs          per delivery", claims)
            await store.close()
            _clear(folder)
    for name, (totals, calls) in sorted(rows.items()):
        print(
            f"  {name}  all {statistics.median(totals):6.2f}"
            f"   call {statistics.median(calls):6.2f}  (calls={len(calls)})"
        )


# The sqlite3 module releases the GIL around these calls (a statement's steps, its compilation
# and, on 3.11, each fetched column's type): a writer sample with one on its stack is GIL-free.
_RELEASED = ("sqlite3_step", "sqlite3_prepare_v2", "sqlite3LockAndPrepare", "sqlite3_column_type")


class _Perf:
    """``perf record`` of one thread, with C call stacks, for as long as the block runs."""

    def __init__(self, tid: int, folder: str, name: str) -> None:
        self.out = Path(folder) / f"{name}.perf"
        self.args = ["perf", "record", "-F", "2000", "--call-graph", "dwarf,16384"]
        self.args += ["-t", str(tid), "-o", str(self.out)]
        self.process: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> _Perf:
        self.process = subprocess.Popen(  # noqa: ASYNC220 (before the measured calls)
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await asyncio.sleep(0.5)  # attached
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        await asyncio.to_thread(self.process.wait)

    def held_share(self) -> float:
        """The share of the thread's CPU samples outside the GIL-free calls."""
        script = subprocess.run(
            ["perf", "script", "-i", str(self.out)], capture_output=True, text=True, check=True
        ).stdout
        samples = [s for s in script.split("\n\n") if s.strip()]
        free = sum(1 for s in samples if any(name in s for name in _RELEASED))
        return 1 - free / max(1, len(samples))


async def gil(batches: int) -> None:
    """The writer's CPU per unit, and how much of it holds the GIL, phase by phase."""
    if shutil.which("perf") is None:
        raise SystemExit("--gil needs Linux perf (perf record / perf script)")
    with tempfile.TemporaryDirectory() as folder:
        store = await _store(folder, "gil.db")
        writer = store._engine._writer
        assert writer is not None
        assert writer.native_id is not None
        clock = _WriterClock(store)
        org = await store.create_organization("bench")
        await store.create_endpoint(org.id, "http://127.0.0.1:9/", None, None)
        batches_of_events = [_events(f"gil_{b}", _PUBLISH) for b in range(batches)]
        attempt = Attempt(1, datetime.now(UTC), 1.0, 200, None, None)
        rows = []
        async with _Perf(writer.native_id, folder, "publish") as perf:
            started = clock.now()
            for events in batches_of_events:
                await store.publish(org.id, events)
            cpu = clock.now() - started
        rows.append(("publish", cpu / (batches * _PUBLISH), perf, "per event (1 endpoint)"))
        claimed: list[str] = []  # ids only: 20,000 records kept would slow the GC meanwhile
        async with _Perf(writer.native_id, folder, "claim") as perf:
            started = clock.now()
            while batch := await store.claim("bench-worker", _CLAIM, 600.0):
                claimed += [c.id for c in batch]
            cpu = clock.now() - started
        rows.append(("claim", cpu / len(claimed), perf, "per delivery (claims of 128)"))
        async with _Perf(writer.native_id, folder, "record") as perf:
            started = clock.now()
            for start in range(0, len(claimed), _CLAIM):
                outcomes = [
                    AttemptOutcome(delivery_id, attempt, DeliveryStatus.SUCCEEDED, None)
                    for delivery_id in claimed[start : start + _CLAIM]
                ]
                await store.record("bench-worker", outcomes)
            cpu = clock.now() - started
        rows.append(("record", cpu / len(claimed), perf, "per outcome (records of 128)"))
        await store.close()
        print("== SQLite writer thread: CPU and GIL held, µs (perf: C stacks of the thread) ==")
        for job, seconds, perf, unit in rows:
            share = perf.held_share()
            print(
                f"  {job:8s} CPU {seconds * 1e6:6.2f}  GIL held {seconds * share * 1e6:6.2f}"
                f" ({share:4.0%})  {unit}"
            )


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--batches", type=int, default=20, help="publishes of 1,000 per run")
    cli.add_argument("--runs", type=int, default=3)
    cli.add_argument("--organizations", type=int, default=20, help="for the spread claim")
    cli.add_argument("--gil", action="store_true", help="GIL time too (Linux perf)")
    args = cli.parse_args(argv)
    if args.gil:
        asyncio.run(gil(args.batches))
    else:
        asyncio.run(run(args.batches, args.runs, args.organizations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
