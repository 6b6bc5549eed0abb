"""Drive one delivery worker in-process against the nginx sink: the delivery path alone.

Publishes ``--events`` events straight into a fresh store (SQLite file, or a PostgreSQL
database with ``--postgres``), then starts a :class:`Worker` and times the drain until the sink
has answered every delivery. No HTTP API, no subprocess: what is measured (and what py-spy
sees, run as ``py-spy record -o out.svg -- .venv/bin/python bench/profile_delivery.py``) is
claim, sign, POST and record only.

Besides the drain rate it prints the CPU time each thread of this process spent during the
drain, as µs per delivery: the event-loop thread (the worker), the SQLite writer thread, and
pyreqwest's tokio threads. CPU per delivery moves far less than a rate when other work shares
the cores, so compare those first. Threads are read from ``/proc/self/task/*/stat`` and named
after their Python ``threading`` name where they have one (native threads keep their own).

    .venv/bin/python bench/profile_delivery.py --events 20000
    .venv/bin/python bench/profile_delivery.py --events 30000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ascend_webhooks.delivery.worker import Worker
from ascend_webhooks.ids import new_id
from ascend_webhooks.service.crypto import SecretBox
from ascend_webhooks.service.settings import Settings
from ascend_webhooks.store.base import Store
from ascend_webhooks.store.models import NewEvent
from sink import Sink, nginx_sink

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Native thread names are cut to 15 characters; numbered workers are grouped into one line.
_NUMBERED = re.compile(r"[-_ ]?\d+$")


def thread_cpu() -> dict[tuple[int, str], float]:
    """CPU seconds (user + system) of every thread of this process, by (id, name)."""
    python_names = {t.native_id: t.name for t in threading.enumerate()}
    main_id = threading.main_thread().native_id
    out: dict[tuple[int, str], float] = {}
    for tid_text in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid_text}/stat") as stat:
                text = stat.read()
        except FileNotFoundError:  # ended meanwhile
            continue
        tid = int(tid_text)
        if tid == main_id:
            name = "event loop (main)"
        else:
            native = text[text.index("(") + 1 : text.rindex(")")]
            name = python_names.get(tid) or _NUMBERED.sub("", native) or native
        fields = text[text.rindex(")") + 2 :].split()
        out[(tid, name)] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return out


def cpu_by_name(
    before: dict[tuple[int, str], float], after: dict[tuple[int, str], float]
) -> dict[str, float]:
    """CPU seconds per thread name spent between two :func:`thread_cpu` snapshots."""
    spent: dict[str, float] = {}
    for key, seconds in after.items():
        spent[key[1]] = spent.get(key[1], 0.0) + seconds - before.get(key, 0.0)
    return dict(sorted(spent.items(), key=lambda item: -item[1]))


def _body(event_id: str) -> bytes:
    head = b'{"id":"' + event_id.encode() + b'","type":"invoice.paid","data":{"pad":"'
    tail = b'"}}'
    return head + b"x" * (1024 - len(head) - len(tail)) + tail


async def _store(url: str) -> Store:
    if url.startswith("sqlite"):
        from ascend_webhooks.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    from ascend_webhooks.store.postgres import PostgresStore

    return PostgresStore(url)


@dataclass
class Drain:
    delivered: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds per thread name
    process_cpu: float


async def drive(args: argparse.Namespace, sink: Sink) -> Drain:
    store = await _store(args.database)
    await store.open()
    box = SecretBox.generate()
    org = await store.create_organization("bench")
    key_id = new_id("key")
    ciphertext = box.encrypt("whsec_" + "k" * 32, organization_id=org.id, key_id=key_id)
    await store.create_key(org.id, ciphertext, activate=True, key_id=key_id)
    await store.create_endpoint(org.id, sink.url, None, None)
    for start in range(0, args.events, 1000):
        events = []
        for _ in range(min(1000, args.events - start)):
            event_id = "evt_" + uuid.uuid4().hex
            body = _body(event_id)
            events.append(NewEvent(event_id, "invoice.paid", body, hashlib.sha256(body).digest()))
        await store.publish(org.id, events)
    settings = Settings(
        database_url=args.database,
        allow_http=True,
        allow_private_networks=True,
        worker_concurrency=args.concurrency,
        endpoint_concurrency=args.endpoint_concurrency,
    )
    before = sink.posts()
    worker = Worker(store, settings, box.decrypt)
    cpu_before = thread_cpu()
    process_before = time.process_time()
    started = time.perf_counter()
    task = asyncio.create_task(worker.run())
    # Polled from a thread: the sink's status read blocks, the worker's loop must not. Every
    # 50 ms, not 5: each poll parses HTTP in Python, holding the GIL the worker needs.
    with contextlib.suppress(TimeoutError):
        await asyncio.to_thread(sink.wait_for, before + args.events, args.timeout, 0.05)
    elapsed = time.perf_counter() - started
    cpu = cpu_by_name(cpu_before, thread_cpu())
    process = time.process_time() - process_before
    delivered = sink.posts() - before
    await worker.drain()
    await task
    await store.close()
    return Drain(delivered, elapsed, cpu, process)


def report(drain: Drain) -> None:
    """The rate, then CPU µs per delivery of each thread that spent any, then the process."""
    per = 1e6 / max(drain.delivered, 1)
    print(
        f"delivered {drain.delivered} in {drain.seconds:.2f} s:"
        f" {drain.delivered / drain.seconds:,.0f}/s (load {os.getloadavg()[0]:.1f})"
    )
    for name, spent in drain.cpu.items():
        if spent * per >= 0.5:
            print(f"  {name:32s} {spent * per:7.1f} µs/delivery  ({spent:.2f} s)")
    print(f"  {'process':32s} {drain.process_cpu * per:7.1f} µs/delivery")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--endpoint-concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--database", default=None, help="a store URL (default: a temp SQLite)")
    parser.add_argument("--repeat", type=int, default=1, help="drains in a row, each its own store")
    args = parser.parse_args()
    import uvloop

    database = args.database
    with tempfile.TemporaryDirectory() as tmp, nginx_sink() as sink:
        for run in range(args.repeat):
            if database is None:
                args.database = f"sqlite:///{os.path.join(tmp, f'profile{run}.db')}"
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                report(runner.run(drive(args, sink)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
