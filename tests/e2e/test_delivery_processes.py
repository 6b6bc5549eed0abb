"""``serve --delivery-processes N``: worker processes started, supervised and stopped by serve."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_serve import (
    CLI,
    Service,
    serve,
    service_env,
    setup_organization,
    stall_a_request,
)
from tests.support.api import MASTER_KEY
from tests.support.processes import eventually, postgres_database
from tests.support.receivers import Receiver

ADMIN = "e2e-admin"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
_STARTED = re.compile(r"delivery process (\d+) started \(pid (\d+)\)")


def children(log: Path) -> dict[int, int]:
    """Slot -> pid of the latest start of each delivery process that serve logged."""
    return {int(slot): int(pid) for slot, pid in _STARTED.findall(log.read_text())}


def alive(pid: int) -> bool:
    # A child that exited but was not reaped yet ("Z") is gone for every purpose here.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def command_line(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_the_delivery_processes_deliver_and_stop_with_serve(
    tmp_path: Path, database: str
) -> None:
    # --no-delivery: serve's own process sends nothing, so every arrival is a child's work.
    async with contextlib.AsyncExitStack() as stack:
        env = service_env(tmp_path, ASCEND_WEBHOOKS_ADMIN_TOKEN=ADMIN)
        if database == "postgresql":
            url = await stack.enter_async_context(postgres_database())
            env.update(ASCEND_WEBHOOKS_DATABASE_URL=url, ASCEND_WEBHOOKS_MASTER_KEY=MASTER_KEY)
        await deliver_through_children(tmp_path, env)


async def deliver_through_children(tmp_path: Path, env: dict[str, str]) -> None:
    args = ("--no-delivery", "--delivery-processes", "2")
    async with (
        serve(tmp_path, env, *args) as service,
        Receiver() as receiver,
        httpx.AsyncClient() as client,
    ):
        await eventually(lambda: len(children(service.stderr)) == 2, within=10)
        pids = children(service.stderr)
        assert all(alive(pid) for pid in pids.values())
        # Each in a session of its own: a terminal's Ctrl-C reaches serve, which stops them.
        assert all(os.getsid(pid) == pid for pid in pids.values())
        # The database URL (it may hold a password) reaches them in their environment, which
        # only their user can read, not on their command lines, which `ps` shows everyone.
        for pid in pids.values():
            argv = command_line(pid)
            assert b"--database-url" not in argv
            assert not any(b"sqlite:" in arg or b"postgresql:" in arg for arg in argv)
        org, secret = await setup_organization(client, service.base_url, ADMIN, receiver)
        receiver.secret = secret
        events = [{"id": f"evt_{n}", "type": "invoice.paid", "data": {"n": n}} for n in range(40)]
        published = await client.post(
            f"{service.base_url}/v1/organizations/{org}/events/batch",
            json={"events": events},
            headers=AUTH,
        )
        assert published.status_code == 202, published.text
        arrived = await receiver.wait_for_requests(40, within=20)
        assert all(request.verified for request in arrived)
        assert {request.event.id for request in arrived if request.event} == {
            event["id"] for event in events
        }
        # Stopped only once both run their worker (one may have delivered all 40 before the
        # other's started): a child signalled while still starting ends without a word.
        await eventually(lambda: service.stderr.read_text().count("worker wrk_") >= 2, within=10)
        assert await service.stop() == 0
        await eventually(lambda: not any(alive(pid) for pid in pids.values()), within=5)
    log = service.stderr.read_text()
    assert "Traceback" not in log
    assert log.count("worker wrk_") >= 4  # each child's worker started and stopped


@asynccontextmanager
async def one_child(tmp_path: Path) -> AsyncIterator[tuple[Service, Receiver, httpx.AsyncClient]]:
    """``serve --no-delivery --delivery-processes 1``, once its child has started: every
    arrival at the receiver is the child's work."""
    env = service_env(tmp_path, ASCEND_WEBHOOKS_ADMIN_TOKEN=ADMIN)
    async with (
        serve(tmp_path, env, "--no-delivery", "--delivery-processes", "1") as service,
        Receiver() as receiver,
        httpx.AsyncClient() as client,
    ):
        await eventually(lambda: 1 in children(service.stderr), within=10)
        yield service, receiver, client


async def publish_one(client: httpx.AsyncClient, service: Service, org: str, event_id: str) -> None:
    published = await client.post(
        f"{service.base_url}/v1/organizations/{org}/events",
        json={"id": event_id, "type": "invoice.paid", "data": {}},
        headers=AUTH,
    )
    assert published.status_code == 202, published.text


async def test_a_delivery_process_that_dies_is_started_again(tmp_path: Path) -> None:
    async with one_child(tmp_path) as (service, receiver, client):
        first = children(service.stderr)[1]
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: children(service.stderr)[1] != first, within=10)
        assert "delivery process 1 exited unexpectedly (status -9)" in service.stderr.read_text()
        # The new child delivers: serve's own process does not (--no-delivery).
        org, secret = await setup_organization(client, service.base_url, ADMIN, receiver)
        receiver.secret = secret
        await publish_one(client, service, org, "evt_after")
        (request,) = await receiver.wait_for_requests(1, within=20)
        assert request.verified
        assert await service.stop() == 0


async def test_an_idle_delivery_process_is_woken_by_a_publish_at_once(tmp_path: Path) -> None:
    # SQLite has no NOTIFY: serve rings the child's doorbell after the commit. Polling alone
    # (every 0.25 s) gave a median of about 125 ms here.
    async with one_child(tmp_path) as (service, receiver, client):
        org, secret = await setup_organization(client, service.base_url, ADMIN, receiver)
        receiver.secret = secret
        delays = []
        for n in range(7):
            await asyncio.sleep(0.3 + 0.05 * n)  # the child is idle, waiting for work
            sent = time.monotonic()
            await publish_one(client, service, org, f"evt_{n}")
            arrived = await receiver.wait_for_requests(n + 1, within=20)
            delays.append(arrived[-1].received_at - sent)
        assert statistics.median(delays) < 0.06, delays
        assert await service.stop() == 0


async def test_delivery_processes_stop_when_serve_is_killed(tmp_path: Path) -> None:
    env = service_env(tmp_path, ASCEND_WEBHOOKS_ADMIN_TOKEN=ADMIN)
    async with serve(tmp_path, env, "--delivery-processes", "1") as service:
        await eventually(lambda: 1 in children(service.stderr), within=10)
        child = children(service.stderr)[1]
        service.process.kill()
        await service.process.wait()
        # Orphaned, the child notices within its check interval and drains as on SIGTERM.
        await eventually(lambda: not alive(child), within=10)
    assert "is gone: stopping" in service.stderr.read_text()


async def test_sigterm_to_serve_and_its_children_starts_no_child_again(tmp_path: Path) -> None:
    # As systemd stops the unit (KillMode=control-group): every process of the group at once,
    # while a request still holds serve open, so that its lifespan's end comes late.
    env = service_env(tmp_path, ASCEND_WEBHOOKS_ADMIN_TOKEN=ADMIN)
    async with serve(tmp_path, env, "--delivery-processes", "2") as service:
        await eventually(lambda: len(children(service.stderr)) == 2, within=10)
        pids = children(service.stderr)
        writer = await stall_a_request(service, ADMIN)
        try:
            for pid in (service.process.pid, *pids.values()):
                os.kill(pid, signal.SIGTERM)
            await eventually(lambda: not any(alive(pid) for pid in pids.values()), within=10)
            await asyncio.sleep(0.5)  # what serve makes of their exits is logged by now
            assert "exited unexpectedly" not in service.stderr.read_text()
            assert await asyncio.wait_for(service.process.wait(), 15) == 0
        finally:
            writer.close()
    log = service.stderr.read_text()
    assert "exited unexpectedly" not in log, log
    assert len(_STARTED.findall(log)) == 2, log  # and none started again


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--delivery-processes", "-1"), "--delivery-processes must be 0 or more"),
        (("--port", "70000"), "--port 70000 is not a TCP port"),
    ],
)
async def test_bad_arguments_are_refused_in_one_line_leaving_nothing(
    tmp_path: Path, args: tuple[str, ...], reason: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        *CLI, "serve", *args, env=service_env(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert err.decode().strip() == f"ascend-webhooks: error: {reason}"
    assert os.listdir(tmp_path) == []  # no database, no master key made for it


def two_free_ports() -> int:
    """A port P such that P and P + 1 are both free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError("no two consecutive free ports")


async def test_each_delivery_process_serves_its_metrics_from_the_metrics_port_up(
    tmp_path: Path,
) -> None:
    port = two_free_ports()
    env = service_env(
        tmp_path, ASCEND_WEBHOOKS_ADMIN_TOKEN=ADMIN, ASCEND_WEBHOOKS_METRICS_PORT=str(port)
    )
    async with (
        serve(tmp_path, env, "--no-delivery", "--delivery-processes", "2") as service,
        Receiver() as receiver,
        httpx.AsyncClient(timeout=5) as client,
    ):
        urls = [f"http://127.0.0.1:{port + n}" for n in (0, 1)]

        async def healthy() -> bool:
            for url in urls:
                try:
                    if (await client.get(f"{url}/healthz")).status_code != 200:
                        return False
                except httpx.TransportError:
                    return False
            return True

        for _ in range(200):
            if await healthy():
                break
            await asyncio.sleep(0.05)
        assert await healthy(), service.stderr.read_text()
        org, secret = await setup_organization(client, service.base_url, ADMIN, receiver)
        receiver.secret = secret
        events = [{"id": f"evt_{n}", "type": "invoice.paid", "data": {}} for n in range(20)]
        published = await client.post(
            f"{service.base_url}/v1/organizations/{org}/events/batch",
            json={"events": events},
            headers=AUTH,
        )
        assert published.status_code == 202, published.text
        await receiver.wait_for_requests(20, within=20)
        # Every attempt was a child's (--no-delivery): together their counters show all 20.
        counted = 0.0
        for _ in range(100):
            counted = 0.0
            for url in urls:
                for line in (await client.get(f"{url}/metrics")).text.splitlines():
                    if line.startswith("ascend_webhooks_attempt_duration_seconds_count"):
                        counted += float(line.rsplit(" ", 1)[1])
            if counted >= 20:
                break
            await asyncio.sleep(0.05)
        assert counted == 20
        assert await service.stop() == 0


async def test_metrics_ports_past_65535_are_refused_in_one_line(tmp_path: Path) -> None:
    env = service_env(tmp_path, ASCEND_WEBHOOKS_METRICS_PORT="65535")
    process = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--delivery-processes", "2", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    (line,) = err.decode().strip().splitlines()
    assert line.startswith("ascend-webhooks: error: ASCEND_WEBHOOKS_METRICS_PORT 65535")
