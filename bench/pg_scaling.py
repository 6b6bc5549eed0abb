"""PostgreSQL scale-out: delivery throughput with 1 and then 2 ``worker`` processes, one run.

The question is whether a second worker process adds throughput, and if not, what holds it
back. For each worker count N (1, then 2), on a fresh PostgreSQL database and the same nginx
sink:

1. **Drain a backlog.** ``serve --no-delivery`` alone accepts ``--events`` events through the
   batch route (nothing is delivered yet), then N ``worker`` processes start. The figure is the
   workers' drain rate: deliveries the sink answered between the moment it had seen the first
   2 % (process start-up excluded) and the last one, divided by that time. The publisher is
   idle meanwhile, so this measures the workers and the database, not the API.
2. **Publish while delivering.** With the same N workers running, ``--live-events`` more are
   published through the batch route as fast as the API takes them; the figure is durable
   throughput, from the first publish call until the sink answered the last delivery (as in
   ``run_all.py``), so the API, the workers and PostgreSQL share the cores.

Where the time goes: during each window the CPU time of every process involved is read from
``/proc/<pid>/stat`` (the API, each worker, PostgreSQL's sessions of this database, its
background writers, nginx, this script, and everything else on the machine), ``top -b -n1``
is captured halfway through the drain, and ``pg_stat_activity`` is sampled every 100 ms for
what this database's sessions were doing and running. The WAL written in each window is read
as it is written with pg_walinspect, keeping this database's records only (other work on a
shared server writes WAL too; the cluster-wide figure is kept beside it, and stands alone when
the segments were recycled before they could be read). After the run, the size of each table
(``pg_total_relation_size``) gives bytes per event, delivery and attempt. Whenever nothing is
delivered for 3 s, the pending deliveries' lease state and the processes' logs are recorded::

    .venv/bin/python bench/pg_scaling.py [--quick] [--events N] [--live-events N] [--workers 1,2]
                                         [--endpoint-concurrency N]

``--endpoint-concurrency`` sets ``ASCEND_WEBHOOKS_ENDPOINT_CONCURRENCY`` for the workers (all
deliveries go to one endpoint here, so that per-endpoint cap decides how much of a worker's
capacity can be used) and writes ``pg_scaling_endpoint_concurrency_N.json`` instead.

Writes ``bench/results/pg_scaling.json``. Needs nginx and PostgreSQL found through the libpq
variables (see docs/benchmarks.md); loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from harness import run_async, run_tag, warn_if_busy, write_result
from run_all import Publisher
from service_process import (
    Service,
    ServiceUnavailable,
    postgres_database,
    running_service,
    service_command,
)
from sink import Sink, SinkError, nginx_sink

EVENTS = 15_000
QUICK_EVENTS = 4_000
LIVE_EVENTS = 3_000
QUICK_LIVE_EVENTS = 2_000
START_FRACTION = 0.02  # the drain window opens once the sink has seen this share
DRAIN_TIMEOUT = 75.0  # these two keep a slow run near 3 minutes in all
LIVE_TIMEOUT = 20.0
# PostgreSQL sessions of this script's own samplers: counted as the bench's, not the service's.
BENCH_BACKENDS: set[int] = set()
STALL_SECONDS = 3.0  # no delivery for this long while some are pending: record why
TICK = os.sysconf("SC_CLK_TCK")
TABLES = ("events", "deliveries", "attempts")
# PostgreSQL's own processes, by what they call themselves in their command line.
_PG_BACKGROUND = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum",
    "logical replication",
    "stats",
    "archiver",
    "walsender",
)


# -- CPU time per process, from /proc ----------------------------------------------------------


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces: skip past it
    return int(fields[11]) + int(fields[12])


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(text[text.rindex(")") + 2 :].split()[1])


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class Roles:
    """Which process is which: the service's, nginx's, PostgreSQL's sessions of our database."""

    database: str
    api: int
    workers: list[int]
    nginx_prefix: str
    me: int = field(default_factory=os.getpid)

    def classify(self, pid: int, cmd: str) -> str | None:
        if pid == self.api:
            return "api (serve --no-delivery)"
        if pid in self.workers:
            return f"worker-{self.workers.index(pid) + 1}"
        if pid == self.me:
            return "bench (publisher, sink polling)"
        if pid in BENCH_BACKENDS:
            return "postgres: the bench's own sampling sessions"
        if cmd.startswith("postgres:"):
            if f" {self.database} " in cmd:
                return "postgres: sessions of this database"
            if any(name in cmd for name in _PG_BACKGROUND):
                return "postgres: background (WAL writer, checkpointer, ...)"
            return "postgres: other databases (other work)"
        if cmd.startswith("nginx:") and (
            self.nginx_prefix in cmd or self.nginx_prefix in _cmdline(_ppid(pid))
        ):
            return "nginx (sink)"
        return None


class CpuWindow:
    """CPU time per role over a window, sampled often so that short-lived processes count."""

    def __init__(self, roles: Roles) -> None:
        self.roles = roles
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.role: dict[int, str] = {}
        self.started = time.perf_counter()
        self.machine_start = _machine_ticks()
        self.machine_end = self.machine_start
        self.ended = self.started
        self.sample(first=True)

    def sample(self, *, first: bool = False) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            ticks = _cpu_ticks(pid)
            if ticks is None:
                continue
            if pid not in self.role:
                cmd = _cmdline(pid)
                role = self.roles.classify(pid, cmd)
                self.role[pid] = role or ""
                # A process born during the window counts from zero.
                self.first[pid] = ticks if first else 0
            self.last[pid] = ticks

    def close(self) -> dict[str, Any]:
        self.sample()
        self.ended = time.perf_counter()
        self.machine_end = _machine_ticks()
        seconds = self.ended - self.started
        per_role: Counter[str] = Counter()
        for pid, ticks in self.last.items():
            if self.role.get(pid):
                per_role[self.role[pid]] += ticks - self.first[pid]
        busy = self.machine_end[0] - self.machine_start[0]
        total = self.machine_end[1] - self.machine_start[1]
        cores = os.cpu_count() or 1
        named = sum(per_role.values())
        # Share of one core, in percent: 100 = one core busy the whole window.
        percent = {role: round(100 * t / TICK / seconds, 1) for role, t in sorted(per_role.items())}
        percent["everything else on the machine"] = round(
            100 * max(0, busy - named) / TICK / seconds, 1
        )
        return {
            "seconds": round(seconds, 2),
            "machine_busy_percent_of_all_cores": round(100 * busy / max(1, total), 1),
            "cores": cores,
            "cpu_percent_of_one_core": percent,
        }


# -- what PostgreSQL's sessions are doing ------------------------------------------------------


class ActivitySampler:
    """Samples ``pg_stat_activity`` for one database every 100 ms, in a thread of its own."""

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database
        self.samples = 0
        self.states: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()  # what the active sessions were running
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: str | None = None

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        # A sampler that loses its connection reconnects: it must never end the benchmark.
        while not self._stop.is_set():
            try:
                conn = await asyncpg.connect(self.url, timeout=10)
            except (OSError, asyncpg.PostgresError) as exc:
                self._error = str(exc)
                await asyncio.sleep(0.5)
                continue
            try:
                await self._sample(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._error = str(exc)
            finally:
                await conn.close()

    async def _sample(self, conn: asyncpg.Connection) -> None:
        BENCH_BACKENDS.add(await conn.fetchval("SELECT pg_backend_pid()"))
        while not self._stop.is_set():
            rows = await conn.fetch(
                "SELECT state, wait_event_type, wait_event,"
                " left(regexp_replace(query, '\\s+', ' ', 'g'), 48) AS query"
                " FROM pg_stat_activity WHERE datname = $1 AND pid <> ALL($2::int[])"
                " AND backend_type = 'client backend'",
                self.database,
                list(BENCH_BACKENDS),
            )
            self.samples += 1
            for state, wait_type, wait, text in rows:
                if state == "active":
                    key = f"active: waiting on {wait_type}:{wait}" if wait else "active: on CPU"
                    self.statements[text.strip()] += 1
                else:
                    key = f"{state}" if state else "unknown"
                self.states[key] += 1
            await asyncio.sleep(0.1)

    def summary(self) -> dict[str, Any]:
        """Mean sessions per sample in each state, most frequent first."""
        result: dict[str, Any] = {"samples": self.samples}
        if self._error:
            result["error"] = self._error
        if self.samples:
            result["mean_sessions"] = {
                key: round(count / self.samples, 2) for key, count in self.states.most_common()
            }
            result["active_statements"] = {
                key: round(count / self.samples, 2) for key, count in self.statements.most_common(6)
            }
        return result


# -- database statistics -----------------------------------------------------------------------


async def _query(url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


def query(url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    """One statement on a connection of its own (the bench's, not the service's)."""
    return asyncio.run(_query(url, statement, *args))


def wal_lsn(url: str) -> str:
    return str(query(url, "SELECT pg_current_wal_lsn()::text")[0][0])


def wal_bytes(url: str, start: str, end: str) -> int:
    return int(
        query(url, "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)", end, start)[0][0]
    )


class WalTracker:
    """WAL written during a window: the cluster's, and the records of this database only.

    The cluster's WAL also carries every other database's writes (other work on a shared
    server), so every second a thread reads the new stretch with pg_walinspect (PostgreSQL 15+)
    and keeps the records with a block of this database; reading as it goes, before other
    work's WAL gets the segments recycled. Commit records, which name no block, are left out
    (about 40 bytes per transaction).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.start = self.position = wal_lsn(url)
        self.end = self.start
        self.records = self.bytes = self.fpi_bytes = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> WalTracker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.end = wal_lsn(self.url)

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            BENCH_BACKENDS.add(await conn.fetchval("SELECT pg_backend_pid()"))
            oid = await conn.fetchval(
                "SELECT oid FROM pg_database WHERE datname = current_database()"
            )
            pattern = f"%/{oid}/%"
            while True:
                stopping = self._stop.wait(1.0)
                upto = await conn.fetchval("SELECT pg_current_wal_flush_lsn()::text")
                row = await conn.fetchrow(
                    "SELECT count(*), coalesce(sum(record_length), 0),"
                    " coalesce(sum(fpi_length), 0)"
                    " FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)"
                    " WHERE block_ref LIKE $3",
                    self.position,
                    upto,
                    pattern,
                )
                assert row is not None
                self.records += int(row[0])
                self.bytes += int(row[1])
                self.fpi_bytes += int(row[2])
                self.position = upto
                if stopping:
                    break
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.error = str(exc)
        finally:
            await conn.close()

    def figures(self, units: int) -> dict[str, Any]:
        """Bytes (and records) per unit: this database's, and the whole cluster's."""
        units = max(1, units)
        figures: dict[str, Any] = {
            "cluster_bytes_per_unit": round(wal_bytes(self.url, self.start, self.end) / units)
        }
        if self.error:
            figures["database_error"] = self.error
        else:
            figures["database_bytes_per_unit"] = round(self.bytes / units)
            figures["database_fpi_bytes_per_unit"] = round(self.fpi_bytes / units)
            figures["database_records_per_unit"] = round(self.records / units, 2)
        return figures


def stall_snapshot(url: str, service: Service) -> dict[str, Any]:
    """Pending deliveries by lease state, and the end of each process's log."""
    rows = query(
        url,
        "SELECT count(*) FILTER (WHERE locked_by IS NOT NULL) AS leased,"
        " count(*) FILTER (WHERE locked_by IS NULL AND next_attempt_at <= now()) AS due,"
        " count(*) FILTER (WHERE locked_by IS NULL AND next_attempt_at > now()) AS waiting,"
        " min(lease_expires_at - now()) FILTER (WHERE locked_by IS NOT NULL)::text AS lease_left"
        " FROM deliveries WHERE status = 'pending'",
    )
    return {"pending": dict(rows[0].items()), "logs": service.log_tail(1200)}


def table_sizes(url: str) -> dict[str, Any]:
    """Rows and bytes of each table: heap, indexes, TOAST, and per row."""
    sizes: dict[str, Any] = {}
    for table in TABLES:
        row = query(
            url,
            f"SELECT count(*) AS rows, pg_total_relation_size('{table}') AS total,"  # noqa: S608
            f" pg_relation_size('{table}') AS heap, pg_indexes_size('{table}') AS indexes"
            f" FROM {table}",
        )[0]
        rows, total = int(row["rows"]), int(row["total"])
        sizes[table] = {
            "rows": rows,
            "total_bytes": total,
            "heap_bytes": int(row["heap"]),
            "index_bytes": int(row["indexes"]),
            "bytes_per_row": round(total / rows) if rows else None,
        }
    return sizes


def row_updates(url: str, deliveries: int) -> dict[str, Any]:
    """Updates of ``deliveries`` rows per delivery, over the whole run (read once the workers
    have exited, so that their sessions' statistics are in). Each delivery made in one attempt
    needs two: its lease (claim) and its outcome (record); every give-back (a release) adds two
    more, its release and the claim that leases it again; a lease extension adds one."""
    rows = query(
        url,
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'deliveries'",
    )
    if not rows or not deliveries:
        return {}
    updates, hot = int(rows[0][0]), int(rows[0][1])
    per = updates / deliveries
    # Every statement of the store is a transaction of its own: commits (the publishes and
    # the bench's own sampling included, a few hundred) count the round trips that wrote.
    commits = query(
        url, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return {
        "updates": updates,
        "hot_updates": hot,
        "per_delivery": round(per, 3),
        "give_backs_per_delivery_at_most": round(max(0.0, per - 2) / 2, 3),
        "transactions_per_delivery": round(int(commits[0][0]) / deliveries, 3),
    }


def server_settings(url: str) -> dict[str, str]:
    names = (
        "server_version",
        "max_connections",
        "shared_buffers",
        "fsync",
        "synchronous_commit",
        "wal_level",
        "full_page_writes",
    )
    rows = query(url, "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1)", names)
    return {r["name"]: f"{r['setting']}{(' x ' + r['unit']) if r['unit'] else ''}" for r in rows}


# -- the worker processes ----------------------------------------------------------------------


@contextlib.contextmanager
def workers(
    service: Service, url: str, master_key: str, count: int, extra_env: dict[str, str]
) -> Iterator[list[int]]:
    """Start ``count`` ``ascend-webhooks worker`` processes; SIGTERM and wait for them on exit."""
    env = dict(os.environ)
    env.update(extra_env)
    env.update(
        {
            "ASCEND_WEBHOOKS_DATABASE_URL": url,
            "ASCEND_WEBHOOKS_MASTER_KEY": master_key,
            "ASCEND_WEBHOOKS_ALLOW_HTTP": "1",
            "ASCEND_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(count):
            with (service.workdir / f"worker-{n + 1}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [*service_command(), "worker"],
                        cwd=service.workdir,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        service.processes.extend(processes)  # so that service.alive() watches them too
        yield [p.pid for p in processes]
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for proc in processes:
            with contextlib.suppress(ValueError):
                service.processes.remove(proc)


# -- one worker count --------------------------------------------------------------------------


def _top() -> list[str]:
    """``top -b -n1``'s header and busiest processes, as the operator would look."""
    try:
        out = subprocess.run(
            ["top", "-b", "-n1", "-w", "160", "-o", "%CPU"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.rstrip() for line in out.splitlines()[:22] if line.strip()]


@dataclass
class Window:
    """What one measured window saw."""

    deliveries: int = 0
    seconds: float = 0.0
    cpu: dict[str, Any] = field(default_factory=dict)
    top: list[str] = field(default_factory=list)
    incomplete: str | None = None


@dataclass
class Followed:
    """How a wait for the sink ended, and what was seen on the way."""

    ended: float
    problem: str | None = None
    top: list[str] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds, POSTs seen)
    stalls: list[dict[str, Any]] = field(default_factory=list)


def _follow(
    sink: Sink,
    service: Service,
    base: int,
    target: int,
    cpu: CpuWindow,
    timeout: float,
    top_at: int | None,
    on_stall: Callable[[], dict[str, Any]] | None = None,
) -> Followed:
    """Poll the sink until it has seen ``base + target`` POSTs; sample CPU and progress."""
    start = time.perf_counter()
    deadline = start + timeout
    last_sample = 0.0
    followed = Followed(start)
    progress = (start, -1)  # when the count last moved, and to what
    while True:
        seen = sink.posts() - base
        now = followed.ended = time.perf_counter()
        if seen != progress[1]:
            progress = (now, seen)
        elif now - progress[0] > STALL_SECONDS and len(followed.stalls) < 3 and on_stall:
            # Nothing delivered for a while: note what the database and the processes say.
            followed.stalls.append({"at_s": round(now - start, 1), "delivered": seen, **on_stall()})
            progress = (now, seen)
        if seen >= target:
            followed.timeline.append((round(now - start, 2), seen))
            return followed
        if top_at is not None and not followed.top and seen >= top_at:
            followed.top = _top()
        if now - last_sample > 0.5:
            cpu.sample()
            last_sample = now
            followed.timeline.append((round(now - start, 2), seen))
            if (reason := service.alive()) is not None:
                followed.problem = f"a process died: {reason[:400]}"
                return followed
        if now > deadline:
            followed.problem = f"{seen} of {target} deliveries in {timeout:g} s"
            followed.problem += "\n" + service.log_tail(1500)
            return followed
        time.sleep(0.01)


def _rates(timeline: list[tuple[float, int]], slices: int = 5) -> list[int]:
    """Deliveries/s in successive equal slices of the window: does the rate hold or decay?"""
    if len(timeline) < 2:
        return []
    t_end = timeline[-1][0]
    rates = []
    for k in range(slices):
        lo, hi = t_end * k / slices, t_end * (k + 1) / slices
        inside = [(t, n) for t, n in timeline if lo <= t <= hi]
        if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
            rates.append(round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])))
    return rates


def measure(
    sink: Sink, count: int, events: int, live_events: int, worker_env: dict[str, str]
) -> dict[str, Any]:
    """One worker count on a fresh database: drain a backlog, then publish while delivering."""
    master_key = base64.b64encode(os.urandom(32)).decode("ascii")
    result: dict[str, Any] = {"workers": count, "worker_env": worker_env}
    with (
        postgres_database() as url,
        running_service(
            url, delivery=False, extra_env={"ASCEND_WEBHOOKS_MASTER_KEY": master_key}
        ) as service,
    ):
        database = url.rsplit("/", 1)[1]
        result["server"] = server_settings(url)
        service.setup(sink.url)
        publisher = Publisher(service)
        run = run_tag()

        # 1. The backlog, published with no worker running.
        cpu = CpuWindow(Roles(database, service.processes[0].pid, [], str(sink.prefix)))
        with WalTracker(url) as wal:
            start = time.perf_counter()
            accepted = run_async(lambda: publisher.publish(run, 0, events))
            publish_seconds = time.perf_counter() - start
        if accepted != events:
            raise ServiceUnavailable(f"published {events} events, {accepted} were accepted")
        result["backlog"] = {
            "events": events,
            "publish_per_s": round(events / publish_seconds),
            "cpu": cpu.close(),
            "wal_per_event": wal.figures(events),
        }
        print(
            f"  {count} worker(s): {events:,} events published at {events / publish_seconds:,.0f}/s"
        )

        base = sink.posts()
        with workers(service, url, master_key, count, worker_env) as pids:
            roles = Roles(database, service.processes[0].pid, pids, str(sink.prefix))
            # 2. The drain, from 2 % of the backlog on (worker start-up excluded).
            opened = base + max(1, int(events * START_FRACTION))
            spawned = time.perf_counter()
            try:
                t0 = sink.wait_for(opened, timeout=DRAIN_TIMEOUT)
            except TimeoutError as exc:
                raise ServiceUnavailable(f"workers did not start delivering: {exc}") from exc
            c0 = sink.posts() - base
            cpu = CpuWindow(roles)
            with ActivitySampler(url, database) as activity, WalTracker(url) as wal:
                followed = _follow(
                    sink,
                    service,
                    base,
                    events,
                    cpu,
                    DRAIN_TIMEOUT,
                    events // 2,
                    lambda: stall_snapshot(url, service),
                )
            t1, problem = followed.ended, followed.problem
            drained = min(events, sink.posts() - base) - c0
            drain: dict[str, Any] = {
                "deliveries_measured": drained,
                "seconds": round(t1 - t0, 2),
                "deliveries_per_s": round(drained / (t1 - t0), 1),
                "with_start_up_per_s": round((drained + c0) / (t1 - spawned), 1),
                "cpu": cpu.close(),
                "postgres_sessions": activity.summary(),
                "top": followed.top,
                "rate_by_fifth_of_window": _rates(followed.timeline),
                "stalls": followed.stalls,
            }
            drain["wal_per_delivery"] = wal.figures(drained)
            if problem:
                drain["incomplete"] = problem
            result["drain"] = drain
            print(
                f"  {count} worker(s): drain {drain['deliveries_per_s']:,.0f} deliveries/s"
                f"{'  [INCOMPLETE: ' + problem.splitlines()[0] + ']' if problem else ''}"
            )
            if not problem and live_events:
                # 3. Publishing while the workers deliver.
                time.sleep(0.3)
                extra = sink.posts() - base - events
                result["drain"]["extra_posts"] = extra
                base2 = sink.posts()
                cpu = CpuWindow(roles)
                start = time.perf_counter()
                with ActivitySampler(url, database) as activity, WalTracker(url) as wal:
                    accepted = run_async(lambda: publisher.publish(f"l{run}", 0, live_events))
                    published = time.perf_counter()
                    followed = _follow(sink, service, base2, live_events, cpu, LIVE_TIMEOUT, None)
                t1, problem = followed.ended, followed.problem
                delivered = min(live_events, sink.posts() - base2)
                live: dict[str, Any] = {
                    "events": live_events,
                    "accepted": accepted,
                    "publish_per_s": round(live_events / (published - start)),
                    "deliveries_per_s": round(delivered / (t1 - start), 1),
                    "seconds": round(t1 - start, 2),
                    "cpu": cpu.close(),
                    "postgres_sessions": activity.summary(),
                    "wal_per_event_published_and_delivered": wal.figures(delivered),
                }
                if problem:
                    live["incomplete"] = problem
                else:
                    time.sleep(0.3)
                    live["extra_posts"] = sink.posts() - base2 - live_events
                result["live"] = live
                print(
                    f"  {count} worker(s): publishing while delivering"
                    f" {live['deliveries_per_s']:,.0f} deliveries/s"
                    f" (published at {live['publish_per_s']:,}/s)"
                    f"{'  [INCOMPLETE: ' + problem.splitlines()[0] + ']' if problem else ''}"
                )
        # The workers have exited (their sessions' statistics are flushed as they end).
        result["row_updates"] = row_updates(
            url, events + (result.get("live") or {}).get("events", 0)
        )
        result["tables"] = table_sizes(url)
    return result


# -- report ------------------------------------------------------------------------------------


def _wal(figures: dict[str, Any]) -> str:
    text = f"cluster {figures['cluster_bytes_per_unit']:,} B"
    if "database_bytes_per_unit" in figures:
        text = (
            f"this database {figures['database_bytes_per_unit']:,} B"
            f" ({figures['database_fpi_bytes_per_unit']:,} B of it full-page images), {text}"
        )
    return text


def _cpu_per_delivery(percent: dict[str, float], rate: float) -> dict[str, float]:
    """Microseconds of CPU per delivery of the database's sessions and of all workers together:
    far steadier than rates on a shared machine."""
    if not rate:
        return {}
    postgres = percent.get("postgres: sessions of this database", 0.0)
    workers = sum(v for k, v in percent.items() if k.startswith("worker"))
    return {"postgres": postgres * 1e4 / rate, "workers": workers * 1e4 / rate}


def report(results: dict[str, Any]) -> list[str]:
    lines = [f"== PostgreSQL: drain of {results['events']:,} pending deliveries, one nginx sink =="]
    rates: dict[int, float] = {}
    live: dict[int, float] = {}
    for part in results["runs"]:
        n = part["workers"]
        if "skipped" in part:
            lines.append(f"  {n} worker(s): SKIPPED: {str(part['skipped']).splitlines()[0][:150]}")
            continue
        drain = part["drain"]
        rates[n] = drain["deliveries_per_s"]
        flag = (
            f"  [INCOMPLETE: {drain['incomplete'].splitlines()[0]}]"
            if "incomplete" in drain
            else ""
        )
        lines.append(f"  {n} worker(s): {drain['deliveries_per_s']:>8,.0f} deliveries/s{flag}")
        cpu = drain["cpu"]
        lines.append(
            f"    machine busy {cpu['machine_busy_percent_of_all_cores']:.0f} % of "
            f"{cpu['cores']} cores; CPU, % of one core:"
        )
        for role, value in sorted(cpu["cpu_percent_of_one_core"].items(), key=lambda kv: -kv[1]):
            lines.append(f"      {value:6.1f}  {role}")
        per = _cpu_per_delivery(cpu["cpu_percent_of_one_core"], drain["deliveries_per_s"])
        if per:
            lines.append(
                "    CPU per delivery: " + ", ".join(f"{k} {v:,.0f} us" for k, v in per.items())
            )
        sessions = drain["postgres_sessions"].get("mean_sessions", {})
        if sessions:
            described = ", ".join(f"{k} {v:g}" for k, v in list(sessions.items())[:5])
            lines.append(f"    this database's sessions (mean per sample): {described}")
        statements = drain["postgres_sessions"].get("active_statements", {})
        if statements:
            described = "; ".join(f"{v:g} x {k!r}" for k, v in list(statements.items())[:4])
            lines.append(f"    active statements (mean per sample): {described}")
        if drain.get("rate_by_fifth_of_window"):
            lines.append(f"    rate by fifth of the window: {drain['rate_by_fifth_of_window']}")
        lines.append(f"    WAL per delivery: {_wal(drain['wal_per_delivery'])}")
        updates = part.get("row_updates") or {}
        if updates:
            lines.append(
                f"    deliveries row updates per delivery (whole run): {updates['per_delivery']:g}"
                f" (2 = a claim and an outcome; give-backs at most"
                f" {updates['give_backs_per_delivery_at_most']:g} per delivery);"
                f" transactions per delivery {updates['transactions_per_delivery']:g}"
            )
        if "live" in part:
            live[n] = part["live"]["deliveries_per_s"]
    if 1 in rates and 2 in rates:
        lines.append(f"  drain, 2 workers / 1 worker: {rates[2] / rates[1]:.2f}")
    if live:
        lines.append(
            f"== publishing {results['live_events']:,} events while delivering (durable) =="
        )
        for n, rate in sorted(live.items()):
            lines.append(f"  {n} worker(s): {rate:>8,.0f} deliveries/s")
        if 1 in live and 2 in live:
            lines.append(f"  publishing while delivering, 2 / 1: {live[2] / live[1]:.2f}")
    return lines


def _uncommitted_sources() -> list[str]:
    """Files under src/ that differ from the commit recorded: the figures measure those too."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=Path(__file__).resolve().parent.parent,  # the repository's root
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line[3:] for line in out.splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description="PostgreSQL: throughput with 1 and 2 workers.")
    cli.add_argument("--quick", action="store_true", help="a short run to check it works")
    cli.add_argument("--events", type=int, default=None, help=f"backlog (default {EVENTS:,})")
    cli.add_argument(
        "--live-events", type=int, default=None, help=f"default {LIVE_EVENTS:,}; 0 to skip"
    )
    cli.add_argument("--workers", default="1,2", help="worker counts, in order (default 1,2)")
    cli.add_argument(
        "--endpoint-concurrency",
        type=int,
        default=None,
        help="ASCEND_WEBHOOKS_ENDPOINT_CONCURRENCY for the workers (default: the service's)",
    )
    args = cli.parse_args(argv)
    warn_if_busy("pg_scaling")
    if changed := _uncommitted_sources():
        print(f"pg_scaling: measuring uncommitted changes too: {', '.join(changed)}")
    events = args.events or (QUICK_EVENTS if args.quick else EVENTS)
    live_events = args.live_events
    if live_events is None:
        live_events = QUICK_LIVE_EVENTS if args.quick else LIVE_EVENTS
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    worker_env: dict[str, str] = {}
    if args.endpoint_concurrency is not None:
        worker_env["ASCEND_WEBHOOKS_ENDPOINT_CONCURRENCY"] = str(args.endpoint_concurrency)
    results: dict[str, Any] = {
        "source_changes_not_committed": _uncommitted_sources(),
        "events": events,
        "live_events": live_events,
        "worker_env": worker_env,
        "runs": [],
    }
    try:
        with nginx_sink() as sink:
            for count in counts:
                try:
                    part = measure(sink, count, events, live_events, worker_env)
                except (ServiceUnavailable, SinkError, OSError, asyncpg.PostgresError) as exc:
                    part = {"workers": count, "skipped": str(exc)}
                    print(f"  {count} worker(s): SKIPPED: {str(exc).splitlines()[0][:200]}")
                results["runs"].append(part)
    except SinkError as exc:
        print(f"pg_scaling: {exc}", file=sys.stderr)
        return 1
    lines = report(results)
    print("\n".join(lines))
    results["summary"] = lines
    name = "pg_scaling"
    if args.endpoint_concurrency is not None:  # a variant: keep the default run's file
        name += f"_endpoint_concurrency_{args.endpoint_concurrency}"
    print(f"wrote {write_result(name, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
