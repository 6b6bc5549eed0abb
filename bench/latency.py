"""Publish-to-first-attempt latency at a fixed rate (500 events/s), per database.

A publisher sends single-event ``POST /v1/organizations/{org}/events`` calls on a fixed schedule
(open loop: a slow answer never delays the next send) and notes ``time.monotonic()`` just before
each; a receiver in its own process notes the same clock (system-wide on Linux) when an event's
whole request has arrived. The latency of an event is arrival minus send: the publish call, the
commit, the worker noticing, signing and POSTing. Only the first arrival of an event counts.

The receiver is a minimal asyncio HTTP/1.1 server (keep-alive, Content-Length bodies, answers
200 at once): a framework would add its own latency to what we measure, and nginx cannot tell
us when each event arrived. The same schedule POSTed straight to the receiver first gives the
floor: what the publisher and receiver add by themselves. Then it runs the embedded default
(one ``serve`` on SQLite) and PostgreSQL with separate API and worker processes (skipped, with
the reason, where it cannot run)::

    .venv/bin/python bench/latency.py [--quick] [--seconds S] [--rate R]
                                     [--delivery-processes N [--no-delivery]]
                                     [--no-postgres | --only-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any, cast

import orjson

from harness import percentile, run_async, run_tag, warn_if_busy, write_result
from service_process import (
    ADMIN_TOKEN,
    Service,
    ServiceUnavailable,
    postgres_database,
    publish_payload,
    running_service,
)

RATE = 500.0
SECONDS = 10.0
WARMUP_SECONDS = 1.0
TARGETS = {"sqlite": (2.0, 10.0), "postgres": (5.0, 25.0)}  # p50, p99 in ms
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


# -- the receiver (its own process) ------------------------------------------------------------


class _ReceiverProtocol(asyncio.Protocol):
    """Parses keep-alive HTTP/1.1 requests and records when each event's body is complete."""

    def __init__(self, arrivals: dict[str, float]) -> None:
        self.arrivals = arrivals
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()  # every request completed by this chunk arrived now
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _CONTENT_LENGTH.search(self.buffer, 0, end + 2)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            with contextlib.suppress(ValueError, TypeError, KeyError):
                self.arrivals.setdefault(orjson.loads(body)["id"], now)
            assert self.transport is not None
            self.transport.write(_RESPONSE)


def _receiver_main(conn: Connection) -> None:
    """Serve on a free loopback port; answer the parent's commands until it says stop."""
    arrivals: dict[str, float] = {}

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _ReceiverProtocol(arrivals), "127.0.0.1", 0, backlog=1024
        )
        conn.send(server.sockets[0].getsockname()[1])
        stopped = loop.create_future()

        def commands() -> None:
            # Runs in a thread: the pipe blocks, the event loop must not.
            while True:
                command = conn.recv()
                if command == "count":
                    conn.send(len(arrivals))
                elif command == "dump":
                    conn.send(dict(arrivals))
                else:
                    loop.call_soon_threadsafe(stopped.set_result, None)
                    return

        threading.Thread(target=commands, daemon=True).start()
        await stopped
        server.close()

    run_async(serve)


@contextlib.contextmanager
def receiver() -> Iterator[tuple[str, Connection]]:
    """Start the receiver process; yield its URL and the pipe that commands it."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_receiver_main, args=(child,), daemon=True)
    process.start()
    try:
        if not parent.poll(30):
            raise ServiceUnavailable("the latency receiver did not start")
        port = parent.recv()
        yield f"http://127.0.0.1:{port}/hook", parent
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(timeout=5)
        if process.is_alive():
            process.kill()


def _arrived(conn: Connection, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.send("count")
        if conn.recv() >= count:
            return True
        time.sleep(0.05)
    return False


# -- the publisher -----------------------------------------------------------------------------


async def _publish_at_rate(
    url: str, expect: int, run: str, first: int, count: int, rate: float
) -> tuple[dict[str, float], list[float], int]:
    """POST ``count`` single events to ``url`` at ``rate``/s; return send times, answer times,
    and how many were not answered ``expect``."""
    from pyreqwest.client import ClientBuilder

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    bodies = [(i, orjson.dumps(publish_payload(run, i))) for i in range(first, first + count)]
    sent: dict[str, float] = {}
    answered: list[float] = []
    errors = 0
    builder = ClientBuilder().timeout(timedelta(seconds=30)).default_headers(headers)
    async with builder.max_connections(256).build() as client:

        async def publish(index: int, body: bytes) -> None:
            nonlocal errors
            event = publish_payload(run, index)["id"]
            start = time.monotonic()
            sent[event] = start
            try:
                response = await client.post(url).body_bytes(body).build().send()
                await response.bytes()
            except Exception:  # counted and reported; the schedule goes on
                errors += 1
                return
            if response.status != expect:
                errors += 1
            answered.append(time.monotonic() - start)

        tasks = []
        origin = time.monotonic()
        for n, (index, body) in enumerate(bodies):
            delay = origin + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(publish(index, body)))
        await asyncio.gather(*tasks)
    return sent, answered, errors


def measure_latency(
    service: Service,
    url: str,
    conn: Connection,
    seconds: float,
    rate: float,
    database: str | None = None,
) -> dict[str, Any]:
    """Set up an endpoint on the receiver, warm up, then measure ``seconds`` at ``rate``.

    With ``database`` (PostgreSQL's URL), also the CPU time per event of the API process, the
    workers and the database's sessions over the measured part (from ``/proc``, as
    ``pg_scaling.py`` reads it): on a shared machine it moves far less than the latency does;
    and the database's transactions per event (every statement of the store is one).
    """
    service.setup(url)
    roles = None
    if database is not None:
        from pg_scaling import Roles

        pids = [p.pid for p in service.processes]
        roles = Roles(database.rsplit("/", 1)[1], pids[0], pids[1:], "-")
    return _measure(
        f"{service.base_url}{service.events_path}", 202, conn, seconds, rate, roles, database
    )


def measure_floor(url: str, conn: Connection, seconds: float, rate: float) -> dict[str, Any]:
    """The same schedule POSTed straight to the receiver: what the method itself adds."""
    return _measure(url, 200, conn, seconds, rate)


def _measure(
    target: str,
    expect: int,
    conn: Connection,
    seconds: float,
    rate: float,
    roles: Any = None,
    database: str | None = None,
) -> dict[str, Any]:
    run = run_tag()
    conn.send("count")
    base = conn.recv()
    warm = max(1, int(WARMUP_SECONDS * rate))
    run_async(lambda: _publish_at_rate(target, expect, f"w{run}", 0, warm, rate))
    count = int(seconds * rate)
    commits = _commits(database)
    cpu, sampling = None, threading.Event()
    if roles is not None:
        from pg_scaling import CpuWindow

        cpu = CpuWindow(roles)

        def sample() -> None:
            while not sampling.wait(0.5):
                cpu.sample()

        threading.Thread(target=sample, daemon=True).start()
    sent, answered, errors = run_async(
        lambda: _publish_at_rate(target, expect, run, 0, count, rate)
    )
    complete = _arrived(conn, base + warm + count, timeout=30)
    sampling.set()
    conn.send("dump")
    arrivals: dict[str, float] = conn.recv()
    latencies = sorted(
        (arrivals[event] - start) * 1000 for event, start in sent.items() if event in arrivals
    )
    publish_ms = sorted(value * 1000 for value in answered)
    figures: dict[str, Any] = {
        "rate": rate,
        "events": count,
        "received": len(latencies),
        "publish_errors": errors,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "publish_p50_ms": percentile(publish_ms, 50),
        "publish_p99_ms": percentile(publish_ms, 99),
    }
    if not complete:
        figures["incomplete"] = f"{len(latencies)} of {count} events arrived"
    if commits is not None:
        time.sleep(1.5)  # sessions send their statistics at most once a second
        end = _commits(database)
        if end is not None:
            figures["transactions_per_event"] = round((end - commits) / count, 2)
    if cpu is not None:
        window = cpu.close()
        percent = window["cpu_percent_of_one_core"]
        per_event = 1e4 * window["seconds"] / count  # % of one core -> us per event
        figures["cpu"] = window
        figures["cpu_us_per_event"] = {
            "api": round(percent.get("api (serve --no-delivery)", 0.0) * per_event),
            "workers": round(
                sum(v for k, v in percent.items() if k.startswith("worker")) * per_event
            ),
            "postgres": round(percent.get("postgres: sessions of this database", 0.0) * per_event),
            "other work on the machine": round(
                percent.get("everything else on the machine", 0.0) * per_event
            ),
        }
    return figures


def _commits(database: str | None) -> int | None:
    """Transactions committed so far in the database (from its statistics)."""
    if database is None:
        return None
    from pg_scaling import query

    sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    return int(query(database, sql)[0][0])


def _mode(
    name: str,
    url: str,
    conn: Connection,
    seconds: float,
    rate: float,
    processes: int = 0,
    no_delivery: bool = False,
) -> dict[str, Any]:
    try:
        if name == "sqlite":
            extra = ["--delivery-processes", str(processes)] if processes else []
            if no_delivery:
                extra.append("--no-delivery")
            with running_service(serve_args=extra) as service:
                return measure_latency(service, url, conn, seconds, rate)
        with postgres_database() as database, running_service(database, workers=2) as service:
            return measure_latency(service, url, conn, seconds, rate, database)
    except ServiceUnavailable as exc:
        return {"skipped": str(exc)}


def _line(name: str, part: dict[str, Any]) -> str:
    if "skipped" in part:
        return f"  {name:<28} SKIPPED: {part['skipped'].strip().splitlines()[0][:150]}"
    p50, p99 = TARGETS.get(name, (math.inf, math.inf))
    met = part["p50_ms"] < p50 and part["p99_ms"] < p99
    verdict = f"target p50 < {p50:g}, p99 < {p99:g}: {'met' if met else 'NOT met'}"
    if name == "floor":
        verdict = "no service: the publisher and receiver alone"
    extra = f" [INCOMPLETE: {part['incomplete']}]" if "incomplete" in part else ""
    if part["publish_errors"]:
        extra += f" [{part['publish_errors']} publish calls not answered 202]"
    if "transactions_per_event" in part:
        extra += f"; {part['transactions_per_event']:g} transactions per event"
    if "cpu_us_per_event" in part:
        extra += "; CPU per event: " + ", ".join(
            f"{k} {v} us" for k, v in part["cpu_us_per_event"].items()
        )
    return (
        f"  {name:<28} p50 {part['p50_ms']:6.2f} ms  p90 {part['p90_ms']:6.2f} ms  "
        f"p99 {part['p99_ms']:6.2f} ms  max {part['max_ms']:7.2f} ms  "
        f"({verdict}); answered in p50 {part['publish_p50_ms']:.2f} ms{extra}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each database's latency, print the percentiles, write latency.json."""
    cli = argparse.ArgumentParser(description="Publish-to-first-attempt latency at a fixed rate.")
    cli.add_argument("--quick", action="store_true", help="2 seconds per database")
    cli.add_argument("--seconds", type=float, default=None, help=f"default {SECONDS:g}")
    cli.add_argument("--rate", type=float, default=RATE, help=f"events/s (default {RATE:g})")
    cli.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL part")
    cli.add_argument("--only-postgres", action="store_true", help="skip the SQLite part")
    cli.add_argument(
        "--delivery-processes",
        type=int,
        default=0,
        help="run the SQLite part's serve with --delivery-processes N (default 0)",
    )
    cli.add_argument(
        "--no-delivery",
        action="store_true",
        help="and with --no-delivery: only the delivery processes deliver (needs N >= 1)",
    )
    args = cli.parse_args(argv)
    if args.no_delivery and args.delivery_processes < 1:
        cli.error("--no-delivery needs --delivery-processes N >= 1: nothing would deliver")
    warn_if_busy("latency")
    seconds = args.seconds or (2.0 if args.quick else SECONDS)
    results: dict[str, Any] = {
        "rate": args.rate,
        "seconds": seconds,
        "delivery_processes": args.delivery_processes,
        "no_delivery": args.no_delivery,
    }
    names = ["sqlite"] if args.no_postgres else ["sqlite", "postgres"]
    if args.only_postgres:
        names = ["postgres"]
    with receiver() as (url, conn):
        results["floor"] = measure_floor(url, conn, min(seconds, 5.0), args.rate)
        print(_line("floor", results["floor"]))
        for name in names:
            results[name] = _mode(
                name, url, conn, seconds, args.rate, args.delivery_processes, args.no_delivery
            )
            print(_line(name, results[name]))
    if args.no_postgres:
        results["postgres"] = {"skipped": "--no-postgres"}
    if args.only_postgres:
        results["sqlite"] = {"skipped": "--only-postgres"}
    print(f"== publish-to-first-attempt latency at {args.rate:g} events/s, {seconds:g} s each ==")
    lines = [_line(name, results[name]) for name in ("floor", "sqlite", "postgres")]
    print("\n".join(lines))
    results["summary"] = lines
    print(f"wrote {write_result('latency', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
