"""``ascend-webhooks serve``, ``worker`` and ``migrate`` as real processes on a temporary DB."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import processes as real
from tests.support.receivers import Receiver, Reply

CLI = [sys.executable, "-m", "ascend_webhooks.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_WEBHOOKS_")}
    env.update(
        ASCEND_WEBHOOKS_DATABASE_URL=f"sqlite:///{tmp_path / 'service.db'}",
        ASCEND_WEBHOOKS_ALLOW_HTTP="1",
        ASCEND_WEBHOOKS_ALLOW_PRIVATE_NETWORKS="1",
        ASCEND_WEBHOOKS_RETRY_SCHEDULE="0.2,0.2",
    )
    env.update(extra)
    return env


@dataclass
class Service:
    process: asyncio.subprocess.Process
    base_url: str
    stderr: Path

    async def stop(self) -> int:
        """SIGTERM, then the exit status (within 15 s)."""
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 15)


@asynccontextmanager
async def serve(tmp_path: Path, env: dict[str, str], *args: str) -> AsyncIterator[Service]:
    port = free_port()
    stderr = tmp_path / f"serve-{port}.log"
    with stderr.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *CLI, "serve", "--port", str(port), *args,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=log,
        )  # fmt: skip
    service = Service(process, f"http://127.0.0.1:{port}", stderr)
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                if process.returncode is not None:
                    pytest.fail(f"serve exited {process.returncode}: {stderr.read_text()}")
                try:
                    if (await client.get(f"{service.base_url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"serve did not answer: {stderr.read_text()}")
        yield service
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def admin_token_from(service: Service) -> str:
    assert service.process.stdout is not None
    line = await asyncio.wait_for(service.process.stdout.readline(), 10)
    assert line.startswith(b"Admin token"), line
    return line.decode().strip().rsplit(" ", 1)[1]


async def setup_organization(
    client: httpx.AsyncClient, base: str, token: str, receiver: Receiver
) -> tuple[str, str]:
    """An organization with a key and an endpoint at the receiver: (organization id, secret)."""
    auth = {"Authorization": f"Bearer {token}"}
    org = await client.post(f"{base}/v1/organizations", json={"name": "Acme"}, headers=auth)
    assert org.status_code == 201, org.text
    org_id = org.json()["id"]
    key = await client.post(f"{base}/v1/organizations/{org_id}/keys", headers=auth)
    assert key.status_code == 201, key.text
    endpoint = await client.post(
        f"{base}/v1/organizations/{org_id}/endpoints", json={"url": receiver.url}, headers=auth
    )
    assert endpoint.status_code == 201, endpoint.text
    return org_id, key.json()["secret"]


@dataclass
class Running:
    """``serve`` on a fresh SQLite file with one organization, its key and an endpoint at
    ``receiver``, which checks signatures with that key."""

    service: Service
    receiver: Receiver
    client: httpx.AsyncClient
    token: str  # the admin token serve printed
    org: str
    secret: str


@asynccontextmanager
async def serving_an_organization(tmp_path: Path) -> AsyncIterator[Running]:
    async with (
        serve(tmp_path, service_env(tmp_path)) as service,
        Receiver() as receiver,
        httpx.AsyncClient() as client,
    ):
        token = await admin_token_from(service)
        org, secret = await setup_organization(client, service.base_url, token, receiver)
        receiver.secret = secret
        yield Running(service, receiver, client, token, org, secret)


async def test_serve_delivers_a_verified_event_and_stops_on_sigterm(tmp_path: Path) -> None:
    async with serving_an_organization(tmp_path) as running:
        published = await running.client.post(
            f"{running.service.base_url}/v1/organizations/{running.org}/events",
            json={"id": "evt_e2e", "type": "invoice.paid", "data": {"amount": 4200}},
            headers={"Authorization": f"Bearer {running.token}"},
        )
        assert published.status_code == 202, published.text
        (request,) = await running.receiver.wait_for_requests(1)
        assert request.verified, request.verify_error
        assert request.event is not None
        assert request.event.id == "evt_e2e"
        assert request.event.data == {"amount": 4200}
        assert request.body == b'{"id":"evt_e2e","type":"invoice.paid","data":{"amount":4200}}'
        # Every organization's events are in the database: its files are the owner's alone.
        files = [tmp_path / f"service.db{suffix}" for suffix in ("", "-wal", "-shm")]
        assert all(f.stat().st_mode & 0o077 == 0 for f in files), [
            oct(f.stat().st_mode) for f in files
        ]
        assert await running.service.stop() == 0
    log = running.service.stderr.read_text()
    assert "Traceback" not in log
    assert running.secret not in log
    assert running.token not in log
    assert (tmp_path / "service.db.key").stat().st_mode & 0o077 == 0


async def test_each_attempt_is_recorded_when_events_and_deliveries_are_numbered_apart(
    tmp_path: Path,
) -> None:
    # An event with no delivery (another organization's, without endpoints) sets the numbers of
    # events and deliveries apart. The delivery handed straight to serve's worker must still
    # have its attempt recorded: it was dropped, and sent again once its lease ran out.
    async with serving_an_organization(tmp_path) as running:
        base, auth = running.service.base_url, {"Authorization": f"Bearer {running.token}"}
        other = await running.client.post(
            f"{base}/v1/organizations", json={"name": "B"}, headers=auth
        )
        unsent = {"id": "evt_b", "type": "invoice.paid", "data": {}}
        published = await running.client.post(
            f"{base}/v1/organizations/{other.json()['id']}/events", json=unsent, headers=auth
        )
        assert published.json()["deliveries"] == []
        for n in range(3):
            published = await running.client.post(
                f"{base}/v1/organizations/{running.org}/events",
                json={"id": f"evt_{n}", "type": "invoice.paid", "data": {}},
                headers=auth,
            )
            assert published.status_code == 202, published.text
            await running.receiver.wait_for_requests(n + 1)
        ids = [d["id"] for d in (await running.client.get(
            f"{base}/v1/organizations/{running.org}/deliveries", headers=auth
        )).json()["data"]]  # fmt: skip
        for _ in range(100):
            states = [(await running.client.get(
                f"{base}/v1/organizations/{running.org}/deliveries/{i}", headers=auth
            )).json() for i in ids]  # fmt: skip
            if all(state["status"] == "succeeded" for state in states):
                break
            await asyncio.sleep(0.05)
        assert [(s["status"], s["attempt_count"], len(s["attempts"])) for s in states] == [
            ("succeeded", 1, 1)
        ] * 3
        assert len(running.receiver.requests) == 3
        assert await running.service.stop() == 0


async def test_a_minimal_batch_answer_over_a_real_server_is_delivered_in_full(
    tmp_path: Path,
) -> None:
    async with serving_an_organization(tmp_path) as running:
        path = f"{running.service.base_url}/v1/organizations/{running.org}/events/batch"
        events = [{"id": f"evt_{n}", "type": "invoice.paid", "data": {"n": n}} for n in range(3)]
        for attempt in ("route", "front"):  # the first publish of the organization: the route
            published = await running.client.post(
                path,
                json={"events": [{**e, "id": f"{e['id']}_{attempt}"} for e in events]},
                headers={"Authorization": f"Bearer {running.token}", "Prefer": "return=minimal"},
            )
            assert published.status_code == 202, published.text
            assert published.headers["preference-applied"] == "return=minimal"
            assert published.json() == {
                "data": [{"id": f"evt_{n}_{attempt}", "created": True} for n in range(3)]
            }
        arrived = await running.receiver.wait_for_requests(6)
        assert all(request.verified for request in arrived)
        assert sorted(request.body for request in arrived) == sorted(
            b'{"id":"evt_%d_%s","type":"invoice.paid","data":{"n":%d}}' % (n, a, n)
            for n in range(3)
            for a in (b"route", b"front")
        )
        assert await running.service.stop() == 0


async def test_api_and_worker_in_separate_processes(tmp_path: Path) -> None:
    env = service_env(tmp_path, ASCEND_WEBHOOKS_ADMIN_TOKEN="e2e-admin")
    migrate = await asyncio.create_subprocess_exec(*CLI, "migrate", env=env)
    assert await asyncio.wait_for(migrate.wait(), 30) == 0
    async with (
        serve(tmp_path, env, "--no-delivery") as service,
        Receiver() as receiver,
        httpx.AsyncClient() as client,
    ):
        org, secret = await setup_organization(client, service.base_url, "e2e-admin", receiver)
        receiver.secret = secret
        published = await client.post(
            f"{service.base_url}/v1/organizations/{org}/events",
            json={"type": "payout.paid", "data": {}},
            headers={"Authorization": "Bearer e2e-admin"},
        )
        assert published.status_code == 202
        await asyncio.sleep(0.5)
        assert receiver.requests == []  # --no-delivery: the API process sends nothing
        worker_log = tmp_path / "worker.log"
        with worker_log.open("wb") as log:
            worker = await asyncio.create_subprocess_exec(
                *CLI, "worker", "--concurrency", "4", env=env, stderr=log
            )
        try:
            (request,) = await receiver.wait_for_requests(1, within=20)
            assert request.verified, request.verify_error
        finally:
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(worker.wait(), 15) == 0
        assert "Traceback" not in worker_log.read_text()
        assert await service.stop() == 0


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"ASCEND_WEBHOOKS_ATTEMPT_TIMEOUT": "soon"}, "ASCEND_WEBHOOKS_ATTEMPT_TIMEOUT"),
        ({"ASCEND_WEBHOOKS_RETRY_SCHEDULE": "1,2,3,4,5,6,7,8,9,10,11"}, "RETRY_SCHEDULE"),
        ({"ASCEND_WEBHOOKS_DATABASE_URL": "mysql://db"}, "unsupported database URL"),
        # (the URL's password is not repeated: the one line says only its scheme)
        ({"ASCEND_WEBHOOKS_DATABASE_URL": "mysql://u:S3CRET@db"}, "(scheme 'mysql')"),
        ({"ASCEND_WEBHOOKS_MASTER_KEY": "short"}, "ASCEND_WEBHOOKS_MASTER_KEY"),
        ({"ASCEND_WEBHOOKS_DATABASE_URL": "postgresql:///x"}, "MASTER_KEY is required"),
        ({"ASCEND_WEBHOOKS_DELIVERY_PROCESSES": "two"}, "ASCEND_WEBHOOKS_DELIVERY_PROCESSES"),
        # (asyncpg's own complaint read as an unreachable server: retried for a minute, exit 1)
        ({"ASCEND_WEBHOOKS_DATABASE_URL": "postgresql:///x?sslmode=bogus"}, "sslmode='bogus'"),
        # (read first by the worker's HTTPS client: serve exited 3; with delivery processes the
        # API stayed up while its child crash-looped)
        ({"ASCEND_WEBHOOKS_CA_FILE": "/nonexistent.pem"}, "ASCEND_WEBHOOKS_CA_FILE"),
        (
            {
                "ASCEND_WEBHOOKS_CA_FILE": "/nonexistent.pem",
                "ASCEND_WEBHOOKS_DELIVERY_PROCESSES": "1",
            },
            "ASCEND_WEBHOOKS_CA_FILE",
        ),
        ({"ASCEND_WEBHOOKS_ATTEMPT_TIMEOUT": "1e308"}, "must be at most 3600"),
        ({"ASCEND_WEBHOOKS_LEASE_SECONDS": "1e-9"}, "ASCEND_WEBHOOKS_LEASE_SECONDS"),
    ],
)
async def test_bad_configuration_is_one_line_and_nonzero(
    tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    await assert_refused("serve", tmp_path, env, reason)


@pytest.mark.parametrize("command", ["worker", "migrate"])
async def test_other_commands_refuse_bad_configuration_too(tmp_path: Path, command: str) -> None:
    env = {"ASCEND_WEBHOOKS_ALLOW_HTTP": "perhaps"}
    await assert_refused(command, tmp_path, env, "ASCEND_WEBHOOKS_ALLOW_HTTP")


async def test_a_missing_ca_file_stops_the_worker_before_it_migrates(tmp_path: Path) -> None:
    # It was a traceback and status 1, after the migrations had run.
    env = {"ASCEND_WEBHOOKS_CA_FILE": "/nonexistent.pem"}
    await assert_refused("worker", tmp_path, env, "ASCEND_WEBHOOKS_CA_FILE")
    # nothing opened, nothing migrated
    assert not await asyncio.to_thread((tmp_path / "service.db").exists)


async def test_a_retry_delay_past_seven_days_stops_the_worker_at_start(tmp_path: Path) -> None:
    # Accepted once, it overflowed the date of the first retry and left the delivery leased.
    env = {"ASCEND_WEBHOOKS_RETRY_SCHEDULE": "5,1e12"}
    await assert_refused("worker", tmp_path, env, "604800 seconds (7 days)")


async def assert_refused(
    command: str, tmp_path: Path, env: dict[str, str], reason: str, *args: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        *CLI, command, *args, env=service_env(tmp_path, **env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:  # it started instead: not left running
            process.kill()
            await process.wait()
    assert process.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, err
    assert reason in lines[0]
    assert "S3CRET" not in lines[0]
    assert lines[0].startswith("ascend-webhooks: error:")


async def test_a_port_already_taken_stops_serve_in_one_line_before_anything_starts(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        reason = f"cannot listen on 127.0.0.1:{port}: Address already in use"
        await assert_refused("serve", tmp_path, {}, reason, "--port", str(port))
    # Refused before the database was opened: no worker ran, no delivery was claimed.
    assert os.listdir(tmp_path) == []


@pytest.mark.postgres
async def test_the_worker_logs_its_database_url_without_a_password(tmp_path: Path) -> None:
    host = os.environ.get("PGHOST", "127.0.0.1")
    if host.startswith("/"):
        pytest.skip("the URL names PostgreSQL on TCP (PGHOST is a socket directory)")
    port, user = os.environ.get("PGPORT", "5432"), os.environ.get("PGUSER", "postgres")
    async with real.postgres_database() as url, real.processes(tmp_path) as group:
        database = url.rsplit("/", 1)[1]
        # libpq and asyncpg take a password in the user info and in the query; the server of
        # the tests trusts its clients, so none of them is checked.
        secret_url = (
            f"postgresql://{user}:USERINFO-PW@{host}:{port}/{database}"
            "?password=QUERY-PW&sslpassword=KEY-PW"
        )
        worker = await group.worker(real.service_env(secret_url))
        assert await worker.stop() == 0
        log = worker.output()
        assert (
            f"delivery worker running on postgresql://{user}:***@{host}:{port}/{database}"
            "?password=***&sslpassword=***"
        ) in log, log
        for secret in ("USERINFO-PW", "QUERY-PW", "KEY-PW"):
            assert secret not in log


async def test_a_key_file_readable_by_others_stops_serve(tmp_path: Path) -> None:
    key_file = tmp_path / "service.db.key"
    key_file.write_text("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
    key_file.chmod(0o644)
    process = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--port", str(free_port()), env=service_env(tmp_path),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert "chmod 600" in err.decode()
    assert "Traceback" not in err.decode()


async def test_sigterm_lets_the_attempt_in_flight_finish(tmp_path: Path) -> None:
    env = service_env(tmp_path, ASCEND_WEBHOOKS_ADMIN_TOKEN="e2e-admin")
    auth = {"Authorization": "Bearer e2e-admin"}
    async with Receiver(behaviour=Reply(200, delay=1.0)) as receiver, httpx.AsyncClient() as client:
        async with serve(tmp_path, env) as service:
            org, secret = await setup_organization(client, service.base_url, "e2e-admin", receiver)
            receiver.secret = secret
            published = await client.post(
                f"{service.base_url}/v1/organizations/{org}/events",
                json={"id": "slow", "type": "invoice.paid", "data": {}},
                headers=auth,
            )
            delivery = published.json()["deliveries"][0]["id"]
            await receiver.wait_for_requests(1)  # the attempt is in flight: the reply is slow
            assert await service.stop() == 0  # waits for the reply and records it
        async with serve(tmp_path, env, "--no-delivery") as service:
            got = await client.get(
                f"{service.base_url}/v1/organizations/{org}/deliveries/{delivery}", headers=auth
            )
            assert got.json()["status"] == "succeeded", got.json()
            assert got.json()["attempt_count"] == 1
            assert await service.stop() == 0
        assert len(receiver.requests) == 1


async def stall_a_request(service: Service, token: str) -> asyncio.StreamWriter:
    """A connection whose request is in progress: its body says 20 bytes and sends one."""
    port = int(service.base_url.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/organizations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {token}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 20\r\n\r\n{"
    )
    await writer.drain()
    await asyncio.sleep(0.3)  # read by the server, which now waits for the rest
    return writer


async def test_a_stalled_client_does_not_keep_serve_from_stopping(tmp_path: Path) -> None:
    env = service_env(tmp_path, ASCEND_WEBHOOKS_ADMIN_TOKEN="e2e-admin")
    async with serve(tmp_path, env) as service:
        writer = await stall_a_request(service, "e2e-admin")
        try:
            started = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            # The worker stops claiming at once, while the request still holds serve open.
            await real.eventually(
                lambda: "stopping the delivery worker" in service.stderr.read_text(), within=2
            )
            assert service.process.returncode is None
            # Then the request is given up after the graceful shutdown's 5 s.
            assert await asyncio.wait_for(service.process.wait(), 15) == 0
            assert time.monotonic() - started < 9
        finally:
            writer.close()
    assert "Traceback" not in service.stderr.read_text()
