"""PostgreSQL through PgBouncer: what a connection pooler costs the delivery throughput.

``run_all.py``'s PostgreSQL part (``serve --no-delivery`` + 2 ``worker`` processes, N 1 KB
events published through the batch route while they are delivered to one nginx sink, from the
first publish call to the sink's N-th 200), three ways, in alternating rounds on fresh
databases:

* ``direct``: every process connects to PostgreSQL itself (the default);
* ``transaction``: through Debian's PgBouncer in transaction mode (``?pooler=transaction``,
  the listener sent to PostgreSQL with ``listen_host``/``listen_port``): no prepared statement
  is kept, and the workers' commits wait for their WAL flush;
* ``session``: through PgBouncer in session mode (``?pooler=session``).

In transaction mode PgBouncer lends ``--server-connections`` sessions (default 10) to all the
clients of the database, as a deployment would size it; in session mode each client connection
holds a session of its own as long as it is open (the three processes' pools and listeners: up
to 63 here), so it gets ``SESSION_MODE_CONNECTIONS``. PgBouncer is started by the tests' helper
(``tests/support/pgbouncer.py``), so the two run it the same way::

    .venv/bin/python bench/pooler.py [--rounds 2] [--events 50000] [--server-connections 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from tests.support.pgbouncer import direct_listen, pooled_url, running_pgbouncer

from harness import warn_if_busy, write_result
from run_all import measure_service
from service_process import postgres_database, running_service
from sink import nginx_sink

MODES = ("direct", "transaction", "session")
SESSION_MODE_CONNECTIONS = 80


def _one(sink: Any, mode: str, events: int, server_connections: int) -> dict[str, Any]:
    with postgres_database() as url:
        if mode == "direct":
            with running_service(url, workers=2) as service:
                return measure_service(sink, service, events)
        database = url.rsplit("/", 1)[1]
        options = f"pooler={mode}" + (f"&{direct_listen()}" if mode == "transaction" else "")
        sessions = server_connections if mode == "transaction" else SESSION_MODE_CONNECTIONS
        with running_pgbouncer(mode, sessions) as port:
            pooled = pooled_url(port, database, options)
            with running_service(pooled, workers=2) as service:
                return measure_service(sink, service, events)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--server-connections", type=int, default=10)
    args = parser.parse_args(argv)
    warn_if_busy("pooler")
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    with nginx_sink() as sink:
        for round_ in range(args.rounds):
            order = MODES if round_ % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                figures = _one(sink, mode, args.events, args.server_connections)
                rate = figures.get("deliveries_per_s")
                if rate is None or "incomplete" in figures:
                    print(f"pooler: {mode}: {figures}", file=sys.stderr)
                    return 1
                rates[mode].append(rate)
                print(f"round {round_ + 1} {mode:12s} {rate:9,.0f} deliveries/s", flush=True)
    direct = statistics.median(rates["direct"])
    print(f"== PostgreSQL, serve --no-delivery + 2 workers, {args.events:,} events ==")
    for mode in MODES:
        median = statistics.median(rates[mode])
        listed = ", ".join(f"{rate:,.0f}" for rate in rates[mode])
        print(f"  {mode:12s} median {median:9,.0f}/s = {median / direct:.2f} of direct  [{listed}]")
    write_result("pooler", {"events": args.events, "rates": rates, **vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
