"""Delivery throughput, all in one run: baseline, service (SQLite, PostgreSQL), ceiling.

The only honest comparison on a shared 2-core machine is one made in the same run against the
same sink, so this script starts one nginx sink and measures, one after the other:

- the ceiling (``ceiling.py``): pyreqwest and aiohttp signing and POSTing with 256 in flight,
  nothing stored;
- the baseline (``baseline_celery.py``): Celery prefork x4 + Redis + requests;
- the service on its embedded SQLite: one ``ascend-webhooks serve`` on a fresh database file,
  then the same with ``--delivery-processes N`` (default 1: worker processes that serve starts
  beside its own worker, to use the cores one process cannot);
- the service on PostgreSQL: ``serve --no-delivery`` plus 2 ``worker`` processes on a fresh
  database.

For the service, events are published over REST (the batch route, 1,000 events a call, when it
exists; single POSTs otherwise) and the figure is durable delivery throughput: events divided by
the time from the first publish call until the sink has answered the last delivery (the
request bodies are built before the clock starts, as the ceiling's and the baseline's are). Every
publish is a 202, so every event was committed before it was delivered. The publisher asks for
the minimal answer (``Prefer: return=minimal``: ids only), as a bulk publisher would: the full
answer repeats every event, and parsing 50 MB of answers it does not use would take this
machine's CPU from the service (the ceiling and the baseline have no such answers to read).
Parts that cannot run here (the service not installed yet, no PostgreSQL) are marked SKIPPED
with the reason::

    .venv/bin/python bench/run_all.py [--quick] [--events N] [--baseline-events N]
                                      [--delivery-processes N] [--no-postgres]
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson

from baseline_celery import measure_baseline
from ceiling import measure_ceiling
from harness import events_from, parser, run_async, run_tag, warn_if_busy, write_result
from service_process import (
    ADMIN_TOKEN,
    Service,
    ServiceUnavailable,
    postgres_database,
    publish_payload,
    running_service,
)
from sink import Sink, SinkError, nginx_sink

BATCH = 1_000  # the batch route's limit
BATCHES_IN_FLIGHT = 4
SINGLES_IN_FLIGHT = 64
WARMUP = 1_000
TARGET_OF_CEILING = 0.70
TARGET_OF_BASELINE = 15.0
DELIVERY_TIMEOUT = 45.0  # keeps a slow service from stretching the run past ~2 minutes


@dataclass(frozen=True)
class Prepared:
    """Request bodies built ahead of the clock: what the senders of the other figures get too."""

    count: int
    batches: list[bytes]  # the batch route's bodies (1,000 events each)
    singles: list[bytes]  # one body per event, for a service without the batch route


class Publisher:
    """Publishes events to one organization over REST with pyreqwest, as fast as it can."""

    def __init__(self, service: Service, *, minimal: bool = False) -> None:
        self.base = service.base_url
        self.path = service.events_path
        self.batch: bool | None = None  # unknown until the first call tells
        self.minimal = minimal  # Prefer: return=minimal (ids and "created" only in the answers)

    def prepare(self, run: str, first: int, count: int) -> Prepared:
        """The bodies for events ``first``…``first+count-1``, built now (outside any clock).

        The ceiling and the baseline build their bodies before their clocks start; so must
        the service's publisher, or the JSON encoding of 50,000 events (about half a second
        here) would count against the service.
        """
        indexes = range(first, first + count)
        batches = [] if self.batch is False else [
            orjson.dumps({"events": [publish_payload(run, i) for i in indexes[n : n + BATCH]]})
            for n in range(0, count, BATCH)
        ]  # fmt: skip
        singles = [] if self.batch else [orjson.dumps(publish_payload(run, i)) for i in indexes]
        return Prepared(count, batches, singles)

    async def publish(self, run: str, first: int, count: int) -> int:
        """Publish events ``first``…``first+count-1``; return how many were answered 202."""
        return await self.send(self.prepare(run, first, count))

    async def send(self, prepared: Prepared) -> int:
        """Publish prepared bodies; return how many events were answered 202."""
        from pyreqwest.client import ClientBuilder

        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        if self.minimal:
            headers["Prefer"] = "return=minimal"
        builder = ClientBuilder().timeout(timedelta(seconds=60)).default_headers(headers)
        async with builder.max_connections(SINGLES_IN_FLIGHT).build() as client:
            if self.batch is not False and prepared.batches:
                accepted = await self._batches(client, prepared.batches)
                if accepted is not None:
                    return accepted
            singles = prepared.singles
            if not singles and prepared.count:  # prepared before the batch route was known
                raise ServiceUnavailable("no batch route: prepare the bodies again")
            return await self._singles(client, singles)

    async def _batches(self, client: Any, bodies: list[bytes]) -> int | None:
        url = f"{self.base}{self.path}/batch"
        if self.batch is None:  # probe with the first batch: is there a batch route?
            response = await client.post(url).body_bytes(bodies[0]).build().send()
            if response.status in (404, 405):
                self.batch = False
                return None
            self.batch = True
            accepted = _accepted(response.status, bytes(await response.bytes()), BATCH)
            bodies = bodies[1:]
        else:
            accepted = 0
        queue = list(reversed(bodies))

        async def worker() -> int:
            done = 0
            while queue:
                body = queue.pop()
                response = await client.post(url).body_bytes(body).build().send()
                done += _accepted(response.status, bytes(await response.bytes()), BATCH)
            return done

        results = await asyncio.gather(*(worker() for _ in range(BATCHES_IN_FLIGHT)))
        return accepted + sum(results)

    async def _singles(self, client: Any, bodies: list[bytes]) -> int:
        url = f"{self.base}{self.path}"
        queue = list(reversed(bodies))

        async def worker() -> int:
            done = 0
            while queue:
                body = queue.pop()
                response = await client.post(url).body_bytes(body).build().send()
                done += _accepted(response.status, bytes(await response.bytes()), 1)
            return done

        results = await asyncio.gather(*(worker() for _ in range(SINGLES_IN_FLIGHT)))
        return sum(results)


def _accepted(status: int, body: bytes, size: int) -> int:
    if status != 202:
        raise ServiceUnavailable(f"publish answered {status}: {body[:300]!r}")
    return size if size == 1 else len(orjson.loads(body)["data"])


def measure_service(
    sink: Sink,
    service: Service,
    events: int,
    *,
    after_warmup: Callable[[], None] | None = None,
    timeout: float = DELIVERY_TIMEOUT,
    minimal: bool = True,
) -> dict[str, Any]:
    """Durable delivery throughput: N events from first publish to the sink's N-th 200.

    ``after_warmup`` runs once the warm-up is delivered, just before the clock starts: the
    profiles start their CPU readings there, so that they measure exactly this window.
    ``minimal``: publish with ``Prefer: return=minimal`` (the full answers otherwise).
    """
    service.setup(sink.url)
    publisher = Publisher(service, minimal=minimal)
    run = run_tag()

    before = sink.posts()
    run_async(lambda: publisher.publish(f"w{run}", 0, WARMUP))
    try:
        sink.wait_for(before + WARMUP, timeout=30)
    except TimeoutError as exc:
        raise ServiceUnavailable(f"warm-up: {exc}") from exc
    if after_warmup is not None:
        after_warmup()

    prepared = publisher.prepare(run, 0, events)
    before = sink.posts()
    start = time.perf_counter()
    accepted = run_async(lambda: publisher.send(prepared))
    published = time.perf_counter()
    if accepted != events:
        raise ServiceUnavailable(f"published {events} events, {accepted} were accepted")
    figures: dict[str, Any] = {
        "events": events,
        "publish_route": "batch" if publisher.batch else "single",
        "publish_per_s": events / (published - start),
    }
    try:
        done = sink.wait_for(before + events, timeout=timeout)
    except TimeoutError:
        seen = sink.posts() - before
        elapsed = time.perf_counter() - start
        figures.update(
            deliveries_per_s=seen / elapsed, seconds=elapsed, incomplete=f"{seen} of {events}"
        )
        return figures
    time.sleep(0.3)  # anything delivered twice would show up now
    figures.update(
        deliveries_per_s=events / (done - start),
        seconds=done - start,
        extra_posts=sink.posts() - before - events,
    )
    return figures


def _service_part(
    sink: Sink, events: int, postgres: bool, delivery_processes: int = 0
) -> dict[str, Any]:
    try:
        if not postgres:
            extra = ["--delivery-processes", str(delivery_processes)] if delivery_processes else []
            with running_service(serve_args=extra) as service:
                return measure_service(sink, service, events)
        with postgres_database() as url, running_service(url, workers=2) as service:
            return measure_service(sink, service, events)
    except (ServiceUnavailable, SinkError, TimeoutError) as exc:
        return {"skipped": str(exc)}


def _line(label: str, part: dict[str, Any]) -> str:
    if "skipped" in part:
        reason = str(part["skipped"]).strip().splitlines()[0][:150]
        return f"  {label:<34} SKIPPED: {reason}"
    extra = f"  [INCOMPLETE: {part['incomplete']}]" if "incomplete" in part else ""
    return f"  {label:<34} {part['deliveries_per_s']:>10,.0f} deliveries/s{extra}"


def report(results: dict[str, Any]) -> list[str]:
    """The lines printed at the end: each figure, then ratios against the targets."""
    ceiling = results["ceiling"].get("deliveries_per_s", math.nan)
    baseline = results["baseline"].get("deliveries_per_s", math.nan)
    lines = [
        f"== delivery throughput, one run, one nginx sink, {results['event_bytes']} B events ==",
        _line("baseline (Celery x4 + Redis)", results["baseline"]),
        _line("service, SQLite (1 serve)", results["service_sqlite"]),
        _line(
            f"service, SQLite (+{results.get('delivery_processes', '?')} processes)",
            results.get("service_sqlite_processes", {"skipped": "not measured"}),
        ),
        _line("service, PostgreSQL (2 workers)", results["service_postgres"]),
        _line(f"ceiling ({results['ceiling'].get('ceiling_client', '?')})", results["ceiling"]),
    ]
    for key, label in (
        ("service_sqlite", "SQLite"),
        ("service_sqlite_processes", "SQLite, serve --delivery-processes"),
        ("service_postgres", "PostgreSQL"),
    ):
        part = results.get(key, {})
        if "deliveries_per_s" not in part:
            continue
        rate = part["deliveries_per_s"]
        part["of_ceiling"] = rate / ceiling
        part["x_baseline"] = rate / baseline
        lines.append(
            f"  {label}: {rate / ceiling:.0%} of the ceiling "
            f"(target >= {TARGET_OF_CEILING:.0%}: {'met' if rate / ceiling >= TARGET_OF_CEILING else 'NOT met'}), "  # noqa: E501
            f"{rate / baseline:.1f}x the baseline "
            f"(target >= {TARGET_OF_BASELINE:g}x: {'met' if rate / baseline >= TARGET_OF_BASELINE else 'NOT met'}); "  # noqa: E501
            f"published at {part['publish_per_s']:,.0f} events/s ({part['publish_route']} route)"
        )
    sqlite = results["service_sqlite"].get("deliveries_per_s")
    postgres = results["service_postgres"].get("deliveries_per_s")
    if sqlite and postgres:
        verdict = "met" if postgres >= sqlite else "NOT met"
        lines.append(f"  PostgreSQL / SQLite: {postgres / sqlite:.2f} (target >= 1: {verdict})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every sender in one run, print figures and ratios, write throughput.json."""
    cli = parser("Ceiling, baseline and the service, one run, one sink.", 50_000, 5_000)
    cli.add_argument("--baseline-events", type=int, default=None, help="default 10,000")
    cli.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL part")
    cli.add_argument(
        "--delivery-processes",
        type=int,
        default=1,
        help="the second SQLite part's serve --delivery-processes (0 skips it; default 1)",
    )
    args = cli.parse_args(argv)
    warn_if_busy("run_all")
    events = events_from(args)
    baseline_events = args.baseline_events or (2_000 if args.quick else 10_000)
    results: dict[str, Any] = {}
    try:
        with nginx_sink() as sink:
            results["ceiling"] = measure_ceiling(sink, events)
            results["event_bytes"] = results["ceiling"]["event_bytes"]
            try:
                results["baseline"] = measure_baseline(sink, baseline_events)
                print(f"baseline: {results['baseline']['deliveries_per_s']:,.0f} deliveries/s")
            except (SinkError, TimeoutError) as exc:
                results["baseline"] = {"skipped": str(exc)}
            results["service_sqlite"] = _service_part(sink, events, postgres=False)
            print(_line("service, SQLite", results["service_sqlite"]).strip())
            results["delivery_processes"] = args.delivery_processes
            if args.delivery_processes:
                results["service_sqlite_processes"] = _service_part(
                    sink, events, postgres=False, delivery_processes=args.delivery_processes
                )
            else:
                results["service_sqlite_processes"] = {"skipped": "--delivery-processes 0"}
            print(_line("service, SQLite + processes", results["service_sqlite_processes"]).strip())
            if args.no_postgres:
                results["service_postgres"] = {"skipped": "--no-postgres"}
            else:
                results["service_postgres"] = _service_part(sink, events, postgres=True)
            print(_line("service, PostgreSQL", results["service_postgres"]).strip())
    except SinkError as exc:
        print(f"run_all: {exc}", file=sys.stderr)
        return 1
    lines = report(results)
    print("\n".join(lines))
    results["summary"] = lines
    print(f"wrote {write_result('throughput', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
