"""Isolation: while one organization's endpoint hangs, do the others keep their throughput?

One ``ascend-webhooks serve`` on SQLite, two organizations: A's endpoint is the nginx sink, B's
is a socket that accepts connections and never answers (every attempt waits out the attempt
timeout). First A's events alone are delivered and timed; then B publishes a flood of events
that all hang, and A's events are delivered and timed again while they do. A global cap on
attempts in flight would fill up with B's hanging attempts and starve A; the figure is A's
throughput during the hang divided by A's throughput alone, from the same run::

    .venv/bin/python bench/isolation.py [--quick] [--events N] [--hanging N]
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from harness import events_from, parser, run_async, run_tag, warn_if_busy, write_result
from run_all import Publisher
from service_process import Service, ServiceUnavailable, running_service
from sink import Sink, SinkError, nginx_sink

HANGING_EVENTS = 2_000  # more than any sane global in-flight cap
DELIVERY_TIMEOUT = 60.0
KEPT = 0.8  # "keeps its throughput": we call 80 % or more kept


@contextlib.contextmanager
def hanging_endpoint() -> Iterator[str]:
    """A loopback URL whose server completes the TCP handshake and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4096)  # connections queue in the kernel; none is ever accepted
        yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"


def _timed_delivery(sink: Sink, publisher: Publisher, events: int) -> float:
    prepared = publisher.prepare(run_tag(), 0, events)  # built before the clock starts
    before = sink.posts()
    start = time.perf_counter()
    run_async(lambda: publisher.send(prepared))
    done = sink.wait_for(before + events, timeout=DELIVERY_TIMEOUT)
    return events / (done - start)


def _second_org(service: Service, url: str) -> Service:
    other = Service(service.base_url, service.workdir, service.processes)
    other.setup(url, name="bench-hanging")
    return other


def measure_isolation(sink: Sink, events: int, hanging: int) -> dict[str, Any]:
    """A alone, then A while B's endpoint hangs; the ratio of the two."""
    with running_service() as service, hanging_endpoint() as dead_url:
        service.setup(sink.url)
        good = Publisher(service)
        _timed_delivery(sink, good, min(1_000, events))  # warm-up
        alone = _timed_delivery(sink, good, events)
        dead = _second_org(service, dead_url)
        try:
            run_async(lambda: Publisher(dead).publish(run_tag(), 0, hanging))
            time.sleep(1.0)  # let the workers pick up (and hang on) B's deliveries
            try:
                during = _timed_delivery(sink, good, events)
            except TimeoutError as exc:
                return {
                    "events": events,
                    "hanging_events": hanging,
                    "alone_per_s": alone,
                    "during_hang_per_s": 0.0,
                    "kept": 0.0,
                    "incomplete": str(exc),
                }
        finally:
            dead.http.close()
    return {
        "events": events,
        "hanging_events": hanging,
        "alone_per_s": alone,
        "during_hang_per_s": during,
        "kept": during / alone,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the isolation check, print the two rates and their ratio, write isolation.json."""
    cli = parser("Throughput of one endpoint while another hangs.", 20_000, 3_000)
    cli.add_argument("--hanging", type=int, default=HANGING_EVENTS, help="events to the dead one")
    args = cli.parse_args(argv)
    warn_if_busy("isolation")
    events = events_from(args)
    try:
        with nginx_sink() as sink:
            figures = measure_isolation(sink, events, args.hanging)
    except (ServiceUnavailable, SinkError) as exc:
        print(f"isolation: SKIPPED: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        write_result("isolation", {"skipped": str(exc)})
        return 1
    verdict = "kept" if figures["kept"] >= KEPT else "NOT kept"
    print(
        f"isolation: A alone {figures['alone_per_s']:,.0f}/s; while B's endpoint hangs with "
        f"{figures['hanging_events']:,} deliveries: {figures['during_hang_per_s']:,.0f}/s "
        f"= {figures['kept']:.0%} ({verdict}; target >= {KEPT:.0%})"
        + (f" [INCOMPLETE: {figures['incomplete']}]" if "incomplete" in figures else "")
    )
    print(f"wrote {write_result('isolation', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
