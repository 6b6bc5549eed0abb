"""Drive one delivery worker in-process against the nginx sink: the delivery path alone.

Publishes ``--events`` events straight into a fresh store (SQLite file, or a PostgreSQL
database with ``--postgres``), then starts a :class:`Worker` and times the drain until the sink
has answered every delivery. No HTTP API, no subprocess: what is measured (and what py-spy
sees, run as ``py-spy record -o out.svg -- .venv/bin/python bench/profile_delivery.py``) is
claim, sign, POST and record only.

    .venv/bin/python bench/profile_delivery.py --events 20000
    .venv/bin/python bench/profile_delivery.py --events 20000 --endpoint-concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ascend_webhooks.delivery.worker import Worker
from ascend_webhooks.service.crypto import SecretBox
from ascend_webhooks.service.settings import Settings
from ascend_webhooks.store.base import Store
from ascend_webhooks.store.models import NewEvent
from sink import Sink, nginx_sink


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


async def drive(args: argparse.Namespace, sink: Sink) -> dict[str, float]:
    store = await _store(args.database)
    await store.open()
    box = SecretBox.generate()
    org = await store.create_organization("bench")
    await store.create_key(org.id, box.encrypt("whsec_" + "k" * 32), activate=True)
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
    started = time.perf_counter()
    task = asyncio.create_task(worker.run())
    # Polled from a thread: the sink's status read blocks, the worker's loop must not.
    with contextlib.suppress(TimeoutError):
        await asyncio.to_thread(sink.wait_for, before + args.events, args.timeout)
    elapsed = time.perf_counter() - started
    delivered = sink.posts() - before
    await worker.drain()
    await task
    await store.close()
    return {"delivered": delivered, "seconds": elapsed, "rate": delivered / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--endpoint-concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--database", default=None, help="a store URL (default: a temp SQLite)")
    args = parser.parse_args()
    import uvloop

    with tempfile.TemporaryDirectory() as tmp, nginx_sink() as sink:
        if args.database is None:
            args.database = f"sqlite:///{os.path.join(tmp, 'profile.db')}"
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(drive(args, sink))
    print(
        f"delivered {result['delivered']:.0f} in {result['seconds']:.2f} s:"
        f" {result['rate']:,.0f}/s (load {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
