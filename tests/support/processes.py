"""Real ``ascend-webhooks serve`` / ``worker`` processes for end-to-end fault tests.

The crash-safety guarantee (SPEC section 3: an event answered 202 is never lost, not on
``kill -9`` of any process, not on a database restart) can only be shown with the real console
script in real processes, killed for real. This module starts them, waits until they are
ready, kills them with SIGKILL, restarts them on the same port and database, and keeps their
output for the failure report:

* :class:`ServiceProcess`: one ``serve`` (ready when ``/healthz`` answers 200) or ``worker``
  (ready when it logs that its worker started). ``kill()`` is SIGKILL, ``restart()`` starts it
  again with the same arguments (and port), ``output()`` is everything it ever wrote.
* :func:`processes`: an async context manager that owns the processes a test starts; on exit it
  kills the ones still running and, if the test failed, prints the tail of every log (pytest
  shows it under "Captured stderr").
* :class:`Publisher`: publishes events over the REST API the way a careful client does: it
  retries on a connection error or a ``503`` with the *same* event ids (the API is idempotent by
  id), and remembers which ids the service accepted (``202``, or ``200`` for an id an earlier,
  unanswered request had already stored). Those are the ids that must reach the receiver.
* :func:`publishing`: publishers running concurrently (single events and batches) for the
  duration of a ``with`` block, through whatever the block does to the service.
* :func:`setup_organization`: an organization with a signing key and an endpoint.
* :func:`postgres_database`: a fresh migrated PostgreSQL database, created and dropped with
  retries, since another test may be restarting the server at that moment;
  :func:`postgres_started_at` tells whether the server restarted in between.
* :func:`arrivals_of` waits until every accepted event reached a receiver (verified) and counts
  the arrivals; :func:`assert_duplicates_only_across_kills` checks that an event arrived again
  only because a kill cut its earlier attempt off.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from tests.support import postgres as pg
from tests.support.api import MASTER_KEY

T = TypeVar("T")

__all__ = [
    "ADMIN",
    "ADMIN_TOKEN",
    "CLI",
    "Organization",
    "ProcessGroup",
    "Publisher",
    "ServiceProcess",
    "arrivals_of",
    "assert_duplicates_only_across_kills",
    "delivery_counts",
    "event_ids",
    "eventually",
    "free_port",
    "postgres_database",
    "postgres_started_at",
    "processes",
    "publishing",
    "service_env",
    "setup_organization",
]

CLI = (sys.executable, "-m", "ascend_webhooks.cli")
ADMIN_TOKEN = "e2e-crash-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# What a worker process logs once its claim loop runs (delivery/worker.py).
_WORKER_READY = re.compile(r"worker \S+ started")
# What a process that cannot reach PostgreSQL at start says (store/postgres.py), in each
# "database not reachable (…), retrying" line and in the line it exits with.
_DATABASE_DOWN = "cannot reach PostgreSQL"


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


async def eventually(
    condition: Callable[[], bool], *, within: float, interval: float = 0.02, what: str = ""
) -> None:
    """Wait until ``condition()`` is true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return
        assert time.monotonic() < deadline, f"not within {within}s: {what or condition}"
        await asyncio.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a service process.

    The caller's own ``ASCEND_WEBHOOKS_*`` variables are dropped; loopback ``http://`` endpoints
    are allowed, the admin token and master key are known, retries are fast. ``extra`` is
    ``NAME=value`` without the prefix: ``service_env(url, LEASE_SECONDS="1")``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_WEBHOOKS_")}
    settings = {
        "DATABASE_URL": database_url,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "MASTER_KEY": MASTER_KEY,
        "ALLOW_HTTP": "1",
        "ALLOW_PRIVATE_NETWORKS": "1",
        "RETRY_SCHEDULE": "0.1,0.2,0.3,0.5,1,1,1,1,1,1",
    }
    settings.update(extra)
    env.update({f"ASCEND_WEBHOOKS_{name}": value for name, value in settings.items()})
    return env


@dataclass
class ServiceProcess:
    """One ``ascend-webhooks serve`` or ``worker`` process, restartable after a kill."""

    command: str  # "serve" or "worker"
    args: tuple[str, ...]
    env: Mapping[str, str]
    log_dir: Path
    name: str
    port: int | None = None  # serve only; kept across restarts
    process: asyncio.subprocess.Process | None = None
    logs: list[Path] = field(default_factory=list)
    kills: int = 0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of a ``serve`` process."""
        assert self.port is not None, f"{self.name} is not a serve process"
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, *, ready_within: float = 30.0) -> None:
        """Start the process and wait until it is ready (fails the test otherwise).

        A process waits for a PostgreSQL that does not answer (another test is restarting the
        server at that moment) for its start-up timeout; one that gives up and exits is started
        again, as a supervisor would.
        """
        assert not self.running, f"{self.name} is already running"
        deadline = time.monotonic() + ready_within
        while True:
            log = self.log_dir / f"{self.name}-{len(self.logs) + 1}.log"
            self.logs.append(log)
            argv = [*CLI, self.command, *self.args]
            if self.port is not None:
                argv += ["--port", str(self.port)]
            with log.open("wb") as out:
                # One file for stdout and stderr: the admin token line never appears (it is
                # set in the environment), so everything there is log output worth reading.
                self.process = await asyncio.create_subprocess_exec(
                    *argv, env=dict(self.env), stdout=out, stderr=asyncio.subprocess.STDOUT
                )
            if await self._wait_ready(log, deadline):
                return
            if _DATABASE_DOWN not in _read(log) or time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.name} exited {self.process.returncode} while starting:\n" + _read(log)
                )
            await asyncio.sleep(0.5)

    async def _wait_ready(self, log: Path, deadline: float) -> bool:
        """True once ready; False if the process exited first."""
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.returncode is not None:
                    return False
                if self.port is None:
                    if _WORKER_READY.search(_read(log)):
                        return True
                else:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(f"{self.base_url}/healthz")).status_code == 200:
                            return True
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} not ready in time:\n" + self.output())

    async def kill(self) -> None:
        """``kill -9``: no shutdown code runs; waits until the process is gone."""
        assert self.process is not None
        assert self.running, f"{self.name} is not running"
        self.process.send_signal(signal.SIGKILL)
        code = await asyncio.wait_for(self.process.wait(), 10)
        assert code == -signal.SIGKILL, f"{self.name} exited {code} before the kill"
        self.kills += 1

    async def restart(self) -> None:
        """Start again with the same command, environment and port (after :meth:`kill`)."""
        await self.start()

    async def stop(self, within: float = 30.0) -> int:
        """SIGTERM (graceful), then the exit status."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), within)

    async def discard(self) -> None:
        """Kill without asserting anything (cleanup)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def output(self) -> str:
        """Everything the process wrote, over every start."""
        parts = []
        for log in self.logs:
            text = _read(log) if log.exists() else ""
            parts.append(f"--- {log.name} ---\n{text}")
        return "\n".join(parts)


@dataclass
class ProcessGroup:
    """The processes one test runs; see :func:`processes`."""

    log_dir: Path
    members: list[ServiceProcess] = field(default_factory=list)

    async def serve(
        self, env: Mapping[str, str], *args: str, name: str = "serve"
    ) -> ServiceProcess:
        """Start ``ascend-webhooks serve`` on a free port; returns once /healthz is 200."""
        service = ServiceProcess(
            "serve", args, env, self.log_dir, self._unique(name), port=free_port()
        )
        self.members.append(service)
        await service.start()
        return service

    async def worker(
        self, env: Mapping[str, str], *args: str, name: str = "worker"
    ) -> ServiceProcess:
        """Start ``ascend-webhooks worker``; returns once its worker logs that it started."""
        worker = ServiceProcess("worker", args, env, self.log_dir, self._unique(name))
        self.members.append(worker)
        await worker.start()
        return worker

    def _unique(self, name: str) -> str:
        taken = {m.name for m in self.members}
        if name not in taken:
            return name
        n = 2
        while f"{name}{n}" in taken:
            n += 1
        return f"{name}{n}"

    def assert_all_running(self) -> None:
        """No process died on its own (a kill by the test is followed by a restart)."""
        dead = [m for m in self.members if not m.running]
        assert not dead, "\n".join(f"{m.name} is not running:\n{m.output()}" for m in dead)

    def output(self) -> str:
        return "\n".join(member.output() for member in self.members)


@contextlib.asynccontextmanager
async def processes(log_dir: Path) -> AsyncIterator[ProcessGroup]:
    """Own the processes of a test: killed at the end, their logs printed if it failed."""
    group = ProcessGroup(log_dir)
    try:
        yield group
    except BaseException:
        for member in group.members:
            tail = member.output()[-6000:]
            print(f"===== {member.name} (kills: {member.kills}) =====\n{tail}", file=sys.stderr)
        raise
    finally:
        for member in group.members:
            await member.discard()


@dataclass(frozen=True)
class Organization:
    id: str
    secret: str
    endpoint_id: str


async def setup_organization(
    client: httpx.AsyncClient, base_url: str, url: str, *, name: str = "Acme"
) -> Organization:
    """An organization with a signing key and one endpoint (every event type) at ``url``."""

    async def post(path: str, body: Any = None) -> dict[str, Any]:
        response = await client.post(f"{base_url}{path}", json=body, headers=ADMIN)
        assert response.status_code == 201, response.text
        document: dict[str, Any] = response.json()
        return document

    org = await post("/v1/organizations", {"name": name})
    key = await post(f"/v1/organizations/{org['id']}/keys")
    endpoint = await post(f"/v1/organizations/{org['id']}/endpoints", {"url": url})
    return Organization(org["id"], key["secret"], endpoint["id"])


@dataclass
class Publisher:
    """Publishes events, retrying through crashes and restarts; remembers what was accepted.

    ``base_url`` may be re-pointed at any time. A request that fails with a connection error,
    a timeout or a ``503`` problem is sent again with the same ids until ``give_up_after``
    seconds have passed; any other answer than 200/202 fails the test.
    """

    client: httpx.AsyncClient
    base_url: str
    organization: str
    give_up_after: float = 60.0
    accepted: list[str] = field(default_factory=list)  # in the order they were accepted
    answered_202: set[str] = field(default_factory=set)  # ids a 202 said were created
    retries: int = 0
    unavailable: int = 0  # 503 answers seen
    connection_errors: int = 0

    async def publish(self, event: Mapping[str, Any]) -> None:
        """``POST …/events``; returns once the event is accepted."""
        body = await self._send("/events", event)
        self._note(body, created=body["created"])

    async def publish_batch(self, events: Sequence[Mapping[str, Any]]) -> None:
        """``POST …/events/batch``; returns once the whole batch is accepted.

        A batch is stored all or nothing: even when an earlier try was cut off, its events
        (fresh ids) must come back all created or all already stored, never a mix.
        """
        body = await self._send("/events/batch", {"events": list(events)})
        assert len(body["data"]) == len(events)
        created = {result["created"] for result in body["data"]}
        assert len(created) == 1, "a batch was stored in part"
        for result in body["data"]:
            self._note(result, created=result["created"])

    def _note(self, result: Mapping[str, Any], *, created: bool) -> None:
        self.accepted.append(result["id"])
        if created:
            self.answered_202.add(result["id"])

    async def _send(self, path: str, body: Any) -> dict[str, Any]:
        deadline = time.monotonic() + self.give_up_after
        while True:
            url = f"{self.base_url}/v1/organizations/{self.organization}{path}"
            try:
                response = await self.client.post(url, json=body, headers=ADMIN)
            except httpx.TransportError:
                self.connection_errors += 1
            else:
                if response.status_code in (200, 202):
                    document: dict[str, Any] = response.json()
                    return document
                assert response.status_code == 503, (response.status_code, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                self.unavailable += 1
            assert time.monotonic() < deadline, f"publish not accepted in {self.give_up_after}s"
            self.retries += 1
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def publishing(
    publisher: Publisher, *, singles: int = 4, batch_size: int = 25
) -> AsyncIterator[None]:
    """Publish unique events (``e0``, ``e1``, …) concurrently until the block ends.

    ``singles`` tasks post one event at a time; one more posts batches of ``batch_size``. When
    the block ends they finish the requests they have started (through retries), so
    ``publisher.accepted`` is final afterwards; a failed publisher fails the block.
    """
    numbers = itertools.count()
    stop = asyncio.Event()

    async def single() -> None:
        while not stop.is_set():
            n = next(numbers)
            await publisher.publish({"id": f"e{n}", "type": "invoice.paid", "data": {"n": n}})

    async def batches() -> None:
        while not stop.is_set():
            ids = [next(numbers) for _ in range(batch_size)]
            await publisher.publish_batch(
                [{"id": f"e{n}", "type": "payout.paid", "data": {"n": n}} for n in ids]
            )
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(single()) for _ in range(singles)]
    tasks.append(asyncio.create_task(batches()))
    try:
        yield
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    stop.set()
    await asyncio.gather(*tasks)


def event_ids(requests: Iterable[Any]) -> list[str]:
    """The event ids of the verified requests a receiver recorded, in arrival order."""
    ids = []
    for request in requests:
        assert request.verified, request.verify_error
        assert request.event is not None
        ids.append(request.event.id)
    return ids


async def delivery_counts(client: httpx.AsyncClient, base_url: str) -> dict[str, int]:
    """The ``ascend_webhooks_deliveries{status}`` gauge of ``/metrics``: counts by status."""
    response = await client.get(f"{base_url}/metrics")
    assert response.status_code == 200, response.text
    counts = {}
    prefix = 'ascend_webhooks_deliveries{status="'
    for line in response.text.splitlines():
        if line.startswith(prefix):
            status, _, value = line[len(prefix) :].partition('"} ')
            counts[status] = int(float(value))
    return counts


async def _through_restarts(make: Callable[[], Awaitable[T]], within: float = 20.0) -> T:
    """``await make()``, again while PostgreSQL does not answer (a restart in progress)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await make()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, pytest.skip.Exception):
            # admin_connection() skips when nothing answers. A local cluster that is down is
            # being restarted by some test (it answers again soon); with no local cluster
            # there is nothing to wait for.
            if time.monotonic() >= deadline or await asyncio.to_thread(pg.cluster) is None:
                raise
            await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh migrated database on the libpq server (skipped if there is none): its URL."""
    url = await _through_restarts(pg.create_database)
    try:
        yield url
    finally:
        await _through_restarts(lambda: pg.drop_database(url))


async def postgres_started_at() -> datetime:
    """When the PostgreSQL server last (re)started: tells whether a restart happened between."""

    async def query() -> datetime:
        conn = await pg.admin_connection()
        try:
            started: datetime = await conn.fetchval("SELECT pg_postmaster_start_time()")
        finally:
            await conn.close()
        return started

    return await _through_restarts(query)


def assert_duplicates_only_across_kills(requests: Iterable[Any], kills: Sequence[float]) -> None:
    """An event arrives again only if its previous arrival was cut off by a kill.

    That is: between two arrivals of one event there is a kill, and the earlier arrival was
    at most a second before it (an attempt in flight, or one whose outcome was not yet
    written). A duplicate with no kill in between would be the service sending twice.
    """
    arrivals: dict[str, list[float]] = {}
    for request in requests:
        assert request.event is not None
        arrivals.setdefault(request.event.id, []).append(request.received_at)
    for event_id, times in arrivals.items():
        for earlier, later in itertools.pairwise(times):
            cut = [k for k in kills if earlier <= k < later]
            assert cut, f"{event_id} arrived twice with no kill in between"
            assert cut[0] - earlier < 1.0, (
                f"{event_id}: arrived {cut[0] - earlier:.2f}s before a kill"
            )


async def arrivals_of(receiver: Any, expected: Iterable[str], *, within: float) -> Counter[str]:
    """Wait until every expected event id has arrived at ``receiver``, signature verified.

    Returns how many times each event id arrived (a short grace after the last expected one
    lets a late duplicate show). Unexpected event ids, or a request that does not verify,
    fail the test.
    """
    wanted = set(expected)
    await eventually(
        lambda: wanted <= {r.event.id for r in receiver.requests if r.event is not None},
        within=within,
        interval=0.05,
        what=f"all {len(wanted)} events at the receiver",
    )
    await asyncio.sleep(0.3)
    arrived = Counter(event_ids(receiver.requests))
    unexpected = set(arrived) - wanted
    assert not unexpected, f"{len(unexpected)} events never accepted arrived: {unexpected}"
    return arrived
