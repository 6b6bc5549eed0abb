"""Backlog: with 1,000,000 deliveries pending, does ``serve`` stay small and keep its pace?

Two drains measured the same way in one run, each on its own SQLite file: events are published
(batch route) to ``serve --no-delivery``, which is then stopped and replaced by a delivering
``serve`` on the same database; the figure is the rate at which the sink receives the first
``--drain`` deliveries after the new ``serve`` answers ``/healthz``. First with only those
events pending (the small-queue figure), then with a backlog of ``--backlog`` events pending.
The resident memory (RSS) of ``serve`` is sampled every 50 ms throughout each drain; with
``--delivery-processes N`` the draining ``serve`` runs N delivery processes beside it, and the
figure is the RSS of ``serve`` and its children together::

    .venv/bin/python bench/backlog.py [--quick] [--backlog N] [--drain N] [--delivery-processes N]

Publishing the backlog takes backlog / (batch publish rate): about 20 s at 50,000 events/s.
``--max-publish-seconds`` bounds it; the backlog actually reached is reported.
"""

from __future__ import annotations

import argparse
import base64
import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import run_async, run_tag, warn_if_busy, write_result
from run_all import Publisher
from service_process import Service, ServiceUnavailable, running_service
from sink import Sink, SinkError, nginx_sink

TARGET_RSS_MB = 300.0
TARGET_KEPT = 0.8
CHUNK = 50_000
DRAIN_TIMEOUT = 120.0


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _tree_rss_mb(pid: int) -> float:
    """RSS of the process and of its children (the delivery processes of a ``serve``)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return _rss_mb(pid) + sum(_rss_mb(int(child)) for child in children)


def _publish(service: Service, events: int, max_seconds: float) -> tuple[int, float]:
    publisher = Publisher(service)
    run = run_tag()
    published = 0
    start = time.perf_counter()
    while published < events and time.perf_counter() - start < max_seconds:
        count = min(CHUNK, events - published)
        published += run_async(functools.partial(publisher.publish, run, published, count))
    return published, published / (time.perf_counter() - start)


def _drain(sink: Sink, service: Service, base: int, events: int) -> dict[str, float]:
    """Rate of deliveries ``base``..``base+events`` from the moment ``service`` is healthy.

    ``base`` is the sink's count before the service started: deliveries made while ``/healthz``
    was still being polled are taken off the count as well as the clock.
    """
    pid = service.processes[0].pid
    start = time.perf_counter()
    early = sink.posts() - base
    peak = _tree_rss_mb(pid)
    deadline = start + DRAIN_TIMEOUT
    while True:
        seen = sink.posts() - base
        peak = max(peak, _tree_rss_mb(pid))
        now = time.perf_counter()
        if seen >= events or now > deadline:
            break
        time.sleep(0.05)
    elapsed = now - start
    return {
        "delivered": seen,
        "before_healthy": early,
        "seconds": elapsed,
        "per_s": (seen - early) / elapsed,
        "rss_mb": peak,
    }


def _pending_then_drain(
    sink: Sink,
    workdir: Path,
    name: str,
    pending: int,
    drain: int,
    max_seconds: float,
    processes: int = 0,
) -> dict[str, Any]:
    url = f"sqlite:///{workdir / (name + '.db')}"
    env = {"ASCEND_WEBHOOKS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode("ascii")}
    with running_service(url, delivery=False, extra_env=env) as api:
        api.setup(sink.url, name=f"bench-{name}")
        org = api.org
        published, publish_rate = _publish(api, pending, max_seconds)
        idle_rss = _rss_mb(api.processes[0].pid)
    base = sink.posts()
    extra = ["--delivery-processes", str(processes)] if processes else []
    with running_service(url, extra_env=env, serve_args=extra) as service:
        service.org = org
        figures = _drain(sink, service, base, min(drain, published))
    return {
        "pending": published,
        "publish_per_s": publish_rate,
        "api_rss_mb": idle_rss,
        **figures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both drains, print them against the targets, write backlog.json."""
    cli = argparse.ArgumentParser(description="Memory and throughput with a large backlog.")
    cli.add_argument("--quick", action="store_true", help="100,000 pending, 10,000 drained")
    cli.add_argument("--backlog", type=int, default=None, help="default 1,000,000")
    cli.add_argument("--drain", type=int, default=None, help="deliveries timed (default 50,000)")
    cli.add_argument("--max-publish-seconds", type=float, default=300.0)
    cli.add_argument(
        "--delivery-processes",
        type=int,
        default=0,
        help="run the draining serve with --delivery-processes N (default 0)",
    )
    args = cli.parse_args(argv)
    warn_if_busy("backlog")
    backlog = args.backlog or (100_000 if args.quick else 1_000_000)
    drain = args.drain or (10_000 if args.quick else 50_000)
    workdir = Path(tempfile.mkdtemp(prefix="ascend-bench-backlog-"))
    processes = args.delivery_processes
    results: dict[str, Any] = {"drain": drain, "delivery_processes": processes}
    try:
        with nginx_sink() as sink:
            limit = args.max_publish_seconds
            results["small"] = _pending_then_drain(
                sink, workdir, "small", drain, drain, limit, processes
            )
            results["backlog"] = _pending_then_drain(
                sink, workdir, "big", backlog, drain, limit, processes
            )
    except (ServiceUnavailable, SinkError) as exc:
        print(f"backlog: SKIPPED: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        write_result("backlog", {"skipped": str(exc)})
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    small, big = results["small"], results["backlog"]
    kept = big["per_s"] / small["per_s"] if small["per_s"] else 0.0
    results["kept"] = kept

    who = f"serve + {processes} processes" if processes else "serve"

    def row(part: dict[str, Any]) -> str:
        return (
            f"  {part['pending']:>9,} pending: {part['per_s']:>8,.0f}/s, "
            f"{who} RSS {part['rss_mb']:.0f} MB (published at {part['publish_per_s']:,.0f}/s)"
        )

    lines = [
        f"== drain of the first {drain:,} deliveries, by the size of the queue ==",
        row(small),
        row(big),
        f"  throughput kept: {kept:.0%} (target >= {TARGET_KEPT:.0%}: "
        f"{'met' if kept >= TARGET_KEPT else 'NOT met'}); RSS with the backlog "
        f"{'under' if big['rss_mb'] < TARGET_RSS_MB else 'NOT under'} {TARGET_RSS_MB:.0f} MB",
    ]
    if big["pending"] < backlog:
        lines.append(f"  (backlog reached {big['pending']:,} of {backlog:,} in the time allowed)")
    print("\n".join(lines))
    results["summary"] = lines
    print(f"wrote {write_result('backlog', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
