"""Starting while the database is down: commands wait for it, then fail in one line.

Real ``ascend-webhooks`` processes against a port where nothing listens, against a port where
a TCP proxy to the real PostgreSQL opens only after a while (the shared server itself is never
restarted), and against databases that waiting cannot fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.support.processes import (
    ADMIN,
    CLI,
    free_port,
    postgres_database,
    processes,
    service_env,
    setup_organization,
)
from tests.support.receivers import Receiver, Reply

_RETRY_LINE = "database not reachable ("
_ERROR = "ascend-webhooks: error: "


async def run_command(
    command: list[str], env: dict[str, str], *, within: float = 30
) -> tuple[int, list[str], float]:
    """Run a command to its end: exit status, stderr lines, seconds taken."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *CLI, *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode is not None
    return process.returncode, err.decode().splitlines(), time.monotonic() - started


@pytest.mark.parametrize(
    "command",
    [["worker"], ["serve", "--no-delivery"], ["serve"], ["migrate"]],
    ids=["worker", "serve-no-delivery", "serve", "migrate"],
)
async def test_a_database_that_never_answers_ends_the_command_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/x"  # nothing listens there
    env = service_env(closed, STARTUP_TIMEOUT="1.6")
    if command[0] == "serve":
        command = [*command, "--port", str(free_port())]
    status, lines, took = await run_command(command, env)

    text = "\n".join(lines)
    assert status == 1, text
    assert "Traceback" not in text
    *retries, last = lines
    assert last.startswith(_ERROR), text
    assert "the database did not answer within 1.6 s" in last
    assert "Connection refused" in last  # the last reason, in the same line
    # One line per failed try, saying when the next comes: 0.5 s, then 1 s, …
    assert len(retries) >= 2, text
    assert all(_RETRY_LINE in line and "retrying in" in line for line in retries), text
    assert "retrying in 0.5 s" in retries[0]
    assert "retrying in 1.0 s" in retries[1]
    assert 1.5 < took < 10, took


async def test_sigterm_while_waiting_for_the_database_stops_cleanly(tmp_path: Path) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    process = await asyncio.create_subprocess_exec(
        *CLI, "worker", env=service_env(closed, STARTUP_TIMEOUT="60"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    first = await asyncio.wait_for(process.stderr.readline(), 10)
    assert _RETRY_LINE.encode() in first  # waiting
    process.terminate()
    _, rest = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0
    assert b"Traceback" not in rest
    assert b"stopped before the database answered" in rest


async def test_a_schema_from_a_newer_release_fails_at_once(tmp_path: Path) -> None:
    database = tmp_path / "newer.db"
    env = service_env(f"sqlite:///{database}", STARTUP_TIMEOUT="30")
    status, lines, _ = await run_command(["migrate"], env)
    assert status == 0, lines
    with contextlib.closing(sqlite3.connect(database)) as conn, conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at)"
            " VALUES (999, 'from_the_future', '', 0)"
        )
    status, lines, took = await run_command(["worker"], env)
    assert status == 1, lines
    assert len(lines) == 1, lines  # no retries: waiting cannot fix it
    assert lines[0].startswith(_ERROR)
    assert "newer version" in lines[0]
    assert took < 10


@pytest.mark.postgres
async def test_a_database_that_does_not_exist_fails_at_once(tmp_path: Path) -> None:
    async with postgres_database() as url:  # skips without a PostgreSQL server
        missing = f"{url}_missing"
        env = service_env(missing, STARTUP_TIMEOUT="30")
        status, lines, took = await run_command(["worker"], env)
    assert status == 1, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(_ERROR)
    assert "does not exist" in lines[0]
    assert took < 10


@contextlib.asynccontextmanager
async def proxy_opened_later(
    port: int, target: tuple[str, int], *, after: float
) -> AsyncIterator[asyncio.Event]:
    """A TCP proxy on 127.0.0.1:``port`` to ``target`` that starts listening ``after`` s."""
    opened = asyncio.Event()
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    async def open_later() -> asyncio.Server:
        await asyncio.sleep(after)
        server = await asyncio.start_server(connected, "127.0.0.1", port)
        opened.set()
        return server

    opener = asyncio.create_task(open_later())
    try:
        yield opened
    finally:
        opener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            server = await opener
            server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


@pytest.mark.postgres
async def test_a_worker_started_before_the_database_answers_waits_then_delivers(
    tmp_path: Path,
) -> None:
    host = os.environ.get("PGHOST", "127.0.0.1")
    if host.startswith("/"):
        pytest.skip("the proxy needs PostgreSQL on TCP (PGHOST is a socket directory)")
    target = (host, int(os.environ.get("PGPORT", "5432")))
    user = os.environ.get("PGUSER", "postgres")
    async with (
        postgres_database() as url,
        processes(tmp_path) as group,
        Receiver(behaviour=Reply(200)) as receiver,
        httpx.AsyncClient(timeout=10) as client,
    ):
        # The API on the database itself: an organization and an event waiting for a worker.
        serve = await group.serve(service_env(url), "--no-delivery")
        org = await setup_organization(client, serve.base_url, receiver.url)
        receiver.secret = org.secret
        published = await client.post(
            f"{serve.base_url}/v1/organizations/{org.id}/events",
            json={"id": "late", "type": "invoice.paid", "data": {"n": 1}},
            headers=ADMIN,
        )
        assert published.status_code == 202, published.text

        # The worker's way to the database opens only after 2 s.
        port = free_port()
        database = url.rsplit("/", 1)[1]
        through_proxy = f"postgresql://{user}@127.0.0.1:{port}/{database}"
        async with proxy_opened_later(port, target, after=2.0) as opened:
            started = time.monotonic()
            worker = await group.worker(service_env(through_proxy, STARTUP_TIMEOUT="30"))
            assert opened.is_set()
            assert worker.running
            (request,) = await receiver.wait_for_requests(1, within=15)
            assert request.verified, request.verify_error
            assert request.event is not None
            assert request.event.id == "late"
            assert time.monotonic() - started < 15
            log = worker.output()
            assert len(worker.logs) == 1, "the worker exited and had to be started again"
            assert log.count(_RETRY_LINE) >= 2, log  # it waited, one line per try
            assert "Traceback" not in log
            assert worker.running


@contextlib.asynccontextmanager
async def postgres_speaking_tls_with(ca: trustme.CA) -> AsyncIterator[int]:
    """A port that answers PostgreSQL's SSLRequest with "S", then a certificate of ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readexactly(8)  # length + the SSLRequest code
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(context)  # the client refuses the certificate here
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_an_untrusted_tls_certificate_fails_at_once(tmp_path: Path) -> None:
    # Waiting cannot make a certificate trusted: one line at once, not retries until the timeout.
    trusted, other = trustme.CA(), trustme.CA()
    root = tmp_path / "root.pem"
    trusted.cert_pem.write_to_path(str(root))
    async with postgres_speaking_tls_with(other) as port:
        url = f"postgresql://postgres@127.0.0.1:{port}/db?sslmode=verify-full&sslrootcert={root}"
        status, lines, took = await run_command(["worker"], service_env(url, STARTUP_TIMEOUT="30"))
    assert status == 1, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(_ERROR)
    assert "certificate" in lines[0]
    assert took < 10
