"""The ceiling: how fast can Python sign and POST our events at all, with nothing stored?

No queue, no database, no retries: a loop that takes each ~1 KB event, signs it with
``ascend_webhooks.sign`` (a fresh timestamp each time, as every attempt must) and POSTs it to
the nginx sink with 256 requests in flight, checking for a 200. Whatever the delivery service
does on top of this (committing the event, claiming, recording the attempt) can only cost, so
this figure is what the service's throughput is held against.

Measures each HTTP client we could use (pyreqwest and aiohttp) on the same sink in the same run
and calls the faster one the ceiling::

    .venv/bin/python bench/ceiling.py [--quick] [--events N]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ascend_webhooks import sign
from harness import (
    SECRET,
    event_body,
    events_from,
    loop_name,
    parser,
    run_async,
    warn_if_busy,
    write_result,
)
from sink import Sink, SinkError, nginx_sink

CONCURRENCY = 256
WARMUP = 1_000  # opens the connections and warms the code paths before the clock starts

PostFn = Callable[[bytes, dict[str, str]], Awaitable[int]]


async def send_all(bodies: Sequence[bytes], post: PostFn, concurrency: int) -> tuple[float, int]:
    """Send every body with ``concurrency`` in flight; return (seconds, non-200 answers)."""
    next_index = 0
    failures = 0

    async def worker() -> None:
        nonlocal next_index, failures
        while next_index < len(bodies):
            body = bodies[next_index]
            next_index += 1
            headers = sign(body, SECRET)
            headers["Content-Type"] = "application/json"
            if await post(body, headers) != 200:
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, failures


async def _with_pyreqwest(url: str, warm: Sequence[bytes], bodies: Sequence[bytes]) -> float:
    from datetime import timedelta

    from pyreqwest.client import ClientBuilder

    builder = ClientBuilder().timeout(timedelta(seconds=15)).follow_redirects(False)
    async with builder.max_connections(CONCURRENCY).build() as client:

        async def post(body: bytes, headers: dict[str, str]) -> int:
            response = await client.post(url).headers(headers).body_bytes(body).build().send()
            await response.bytes()
            return response.status

        await send_all(warm, post, CONCURRENCY)
        elapsed, failures = await send_all(bodies, post, CONCURRENCY)
    if failures:
        raise SinkError(f"pyreqwest: {failures} POSTs were not answered 200")
    return elapsed


async def _with_aiohttp(url: str, warm: Sequence[bytes], bodies: Sequence[bytes]) -> float:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(body: bytes, headers: dict[str, str]) -> int:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as r:
                await r.read()
                return r.status

        await send_all(warm, post, CONCURRENCY)
        elapsed, failures = await send_all(bodies, post, CONCURRENCY)
    if failures:
        raise SinkError(f"aiohttp: {failures} POSTs were not answered 200")
    return elapsed


CLIENTS: dict[str, Callable[[str, Sequence[bytes], Sequence[bytes]], Awaitable[float]]] = {
    "pyreqwest": _with_pyreqwest,
    "aiohttp": _with_aiohttp,
}


def measure_ceiling(sink: Sink, events: int) -> dict[str, Any]:
    """Measure every client on ``sink``; the fastest is the ceiling. Checks the sink's count."""
    warm = [event_body("warmup00", i) for i in range(WARMUP)]
    bodies = [event_body("ceiling0", i) for i in range(events)]
    clients: dict[str, dict[str, float]] = {}
    for name, run in CLIENTS.items():
        before = sink.posts()
        try:
            elapsed = run_async(lambda run=run: run(sink.url, warm, bodies))  # type: ignore[misc]
        except ImportError as exc:
            print(f"ceiling: {name} skipped ({exc})")
            continue
        seen = sink.posts() - before
        if seen != len(warm) + events:
            raise SinkError(f"{name}: sent {len(warm) + events} POSTs, the sink saw {seen}")
        rate = events / elapsed
        clients[name] = {"deliveries_per_s": rate, "seconds": elapsed}
        print(f"ceiling: {name:<10} {rate:>10,.0f} deliveries/s  ({events:,} in {elapsed:.2f} s)")
    best = max(clients, key=lambda name: clients[name]["deliveries_per_s"])
    return {
        "events": events,
        "concurrency": CONCURRENCY,
        "event_bytes": len(bodies[0]),
        "event_loop": loop_name(),
        "clients": clients,
        "ceiling_client": best,
        "deliveries_per_s": clients[best]["deliveries_per_s"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Start a sink, measure the ceiling, print it and write ``bench/results/ceiling.json``."""
    cli = parser("Signed POSTs to a local nginx, nothing stored.", 50_000, 5_000)
    args = cli.parse_args(argv)
    warn_if_busy("ceiling")
    events = events_from(args)
    try:
        with nginx_sink() as sink:
            figures = measure_ceiling(sink, events)
    except SinkError as exc:
        print(f"ceiling: {exc}", file=sys.stderr)
        return 1
    print(
        f"ceiling: {figures['deliveries_per_s']:,.0f} deliveries/s "
        f"({figures['ceiling_client']}, {CONCURRENCY} in flight, {figures['event_bytes']} B events)"
    )
    print(f"wrote {write_result('ceiling', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
