"""Where the CPU goes, per event, in run_all's PostgreSQL part (or its SQLite one).

Runs exactly what ``run_all.measure_service`` measures (a warm-up of 1,000 events, then N 1 KB
events through the batch route, 1,000 a call, 4 in flight, delivered to one nginx sink) on
``serve --no-delivery`` + 2 workers and a fresh PostgreSQL database, and samples every
process's CPU time (``/proc/<pid>/stat``, every 100 ms so that short-lived processes count)
from the first publish call until the sink has answered the last delivery (and the 0.3 s in
which ``measure_service`` looks for duplicates). Prints the rate and
CPU microseconds per event for the API process, each worker, PostgreSQL's sessions of the
database, its background processes, nginx and the publisher (this process)::

    .venv/bin/python bench/profile_pg_run.py [--events N] [--repeat N] [--sqlite]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from harness import write_result
from pg_scaling import TICK, CpuWindow, Roles, _cmdline, query
from run_all import measure_service
from service_process import ServiceUnavailable, postgres_database, running_service
from sink import Sink, nginx_sink


def _sampled(cpu: CpuWindow, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.wait(0.1):
            cpu.sample()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def measure(sink: Sink, events: int, sqlite: bool) -> dict[str, Any]:
    """One run on a fresh database: the rate and CPU per event of every process."""
    with (
        postgres_database() if not sqlite else _no_database() as url,
        running_service(url, workers=0 if sqlite else 2) as service,
    ):
        database = url.rsplit("/", 1)[1] if url else "-"
        pids = [p.pid for p in service.processes]
        stop = threading.Event()
        started: list[Any] = []

        def start_readings() -> None:  # after the warm-up, as the clock starts
            window = CpuWindow(Roles(database, pids[0], pids[1:], str(sink.prefix)))
            started.extend((window, _db_stats(url), _sampled(window, stop)))

        figures = measure_service(sink, service, events, after_warmup=start_readings, timeout=90)
        stop.set()
        cpu, stats0, sampler = started
        sampler.join()
        window = cpu.close()
        if "incomplete" in figures:
            raise ServiceUnavailable(f"delivered {figures['incomplete']} in the time allowed")
        stats1 = _db_stats(url)
        per_event = {k: round((stats1[k] - stats0[k]) / events, 3) for k in stats0}
        owners = _client_owners()
        names = {pids[0]: "api"} | {pid: f"worker-{n + 1}" for n, pid in enumerate(pids[1:])}
        per_role: dict[str, float] = {}
        for pid, ticks in cpu.last.items():
            role = cpu.role.get(pid)
            if role == "postgres: sessions of this database":
                match = re.search(r"\((\d+)\)", _cmdline(pid))
                owner = owners.get(int(match.group(1))) if match else None
                role = f"postgres: sessions of {names.get(owner or 0, 'bench/other')}"
            if role:
                per_role[role] = per_role.get(role, 0.0) + (ticks - cpu.first[pid])
        us = {role: round(t / TICK * 1e6 / events, 1) for role, t in sorted(per_role.items())}
        return {
            "deliveries_per_s": round(figures["deliveries_per_s"]),
            "publish_per_s": round(figures["publish_per_s"]),
            "cpu_us_per_event": us,
            "cpu_us_per_event_total_service": round(
                sum(v for k, v in us.items() if not k.startswith(("bench", "nginx"))), 1
            ),
            "database_per_event": per_event,
            "machine_busy_percent": window["machine_busy_percent_of_all_cores"],
            "else_percent_of_one_core": window["cpu_percent_of_one_core"][
                "everything else on the machine"
            ],
        }


def _db_stats(url: str | None) -> dict[str, int]:
    """Counters of the database: commits, row changes and index reads of deliveries."""
    if url is None:
        return {}
    rows = query(
        url,
        "SELECT xact_commit, xact_rollback, (SELECT n_tup_upd FROM pg_stat_user_tables"
        " WHERE relname = 'deliveries') AS upd, (SELECT n_tup_hot_upd FROM pg_stat_user_tables"
        " WHERE relname = 'deliveries') AS hot, (SELECT idx_tup_fetch FROM pg_stat_user_tables"
        " WHERE relname = 'deliveries') AS fetched, (SELECT idx_scan FROM pg_stat_user_tables"
        " WHERE relname = 'deliveries') AS scans"
        " FROM pg_stat_database WHERE datname = current_database()",
    )
    tables = query(
        url,
        "SELECT relname, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch FROM pg_stat_user_tables"
        " WHERE relname IN ('events', 'deliveries', 'attempts', 'endpoints', 'organizations')",
    )
    indexes = query(
        url,
        "SELECT indexrelname, idx_scan, idx_tup_read FROM pg_stat_user_indexes"
        " WHERE relname = 'deliveries'",
    )
    time.sleep(0.6)  # the statistics collector's view lags
    found = {k: int(v or 0) for k, v in dict(rows[0]).items()}
    for row in tables:
        for column in ("seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch"):
            found[f"{row['relname']}.{column}"] = int(row[column] or 0)
    for row in indexes:
        found[f"{row['indexrelname']}.scans"] = int(row["idx_scan"] or 0)
        found[f"{row['indexrelname']}.read"] = int(row["idx_tup_read"] or 0)
    return found


def _client_owners() -> dict[int, int]:
    """Local TCP port of each loopback connection to PostgreSQL -> the pid that holds it."""
    text = subprocess.run(
        ["ss", "-tnpH", "dst", "127.0.0.1:5432"], capture_output=True, text=True, check=False
    ).stdout
    owners = {}
    for line in text.splitlines():
        port = re.search(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:5432", line)
        pid = re.search(r"pid=(\d+)", line)
        if port and pid:
            owners[int(port.group(1))] = int(pid.group(1))
    return owners


class _no_database:  # a context manager standing in for postgres_database()
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    cli.add_argument("--events", type=int, default=50_000)
    cli.add_argument("--repeat", type=int, default=1)
    cli.add_argument("--sqlite", action="store_true", help="the embedded serve instead")
    args = cli.parse_args(argv)
    runs = []
    with nginx_sink() as sink:
        for n in range(args.repeat):
            result = measure(sink, args.events, args.sqlite)
            runs.append(result)
            print(
                f"run {n + 1}: {result['deliveries_per_s']:,}/s",
                result["cpu_us_per_event"],
                f"busy {result['machine_busy_percent']}%",
                result["database_per_event"],
                flush=True,
            )
    rates = [r["deliveries_per_s"] for r in runs]
    print(f"median {statistics.median(rates):,.0f}/s over {len(rates)}: {rates}")
    roles = sorted({k for r in runs for k in r["cpu_us_per_event"]})
    for role in roles:
        values = [r["cpu_us_per_event"].get(role, 0.0) for r in runs]
        print(f"  {role:<55} median {statistics.median(values):7.1f} us/event  {values}")
    name = "profile_pg_run_sqlite" if args.sqlite else "profile_pg_run"
    print(f"wrote {write_result(name, {'runs': runs})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
