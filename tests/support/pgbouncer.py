"""A real PgBouncer (Debian's ``pgbouncer``) in front of the test PostgreSQL, for one test.

It pools in the mode asked for with only ``server_connections`` sessions to the server, fewer
than the store's pools hold, so that clients really share sessions (a prepared statement or a
session setting left on one would show up on another client's calls). ``auth_type = any``:
PgBouncer logs in as the libpq user whatever the client says. PgBouncer refuses to run as
root, so under root it runs as the ``postgres`` system user (or ``nobody``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import free_port

_BINARY = "/usr/sbin/pgbouncer"


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"]
    _missing("PgBouncer will not run as root and there is no other user to run it as")
    return []


@contextlib.contextmanager
def running_pgbouncer(mode: str, server_connections: int = 2) -> Iterator[int]:
    """PgBouncer pooling in ``mode`` (``session``/``transaction``) on a free port: the port."""
    binary = shutil.which("pgbouncer") or (_BINARY if os.path.exists(_BINARY) else None)
    if binary is None:
        _missing("pgbouncer is not installed: apt-get install -y pgbouncer")
    assert binary is not None
    host = os.environ.get("PGHOST", "127.0.0.1")
    if host.startswith("/"):
        _missing("the tests reach PostgreSQL over a socket; PgBouncer here needs TCP")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="aw-pgbouncer-") as folder:
        os.chmod(folder, 0o755)  # noqa: S103 (PgBouncer's user reads its config here)
        config = Path(folder) / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={host} port={os.environ.get('PGPORT', '5432')}"
            f" user={os.environ.get('PGUSER', 'postgres')}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = any\npool_mode = {mode}\ndefault_pool_size = {server_connections}\n"
            "max_client_conn = 500\nignore_startup_parameters = extra_float_digits\n"
            "logfile =\npidfile =\n",
            encoding="utf-8",
        )
        config.chmod(0o644)
        log = Path(folder) / "pgbouncer.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*_run_as(), binary, str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    process.wait(timeout=5)
                    raise RuntimeError(f"pgbouncer did not start: {log.read_text()[-2000:]}")
                time.sleep(0.05)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def pooled_url(port: int, database: str, options: str) -> str:
    """A URL of ``database`` through the PgBouncer on ``port``, with ``options`` (a query)."""
    user = os.environ.get("PGUSER", "postgres")
    return f"postgresql://{user}@127.0.0.1:{port}/{database}?{options}"


def direct_listen() -> str:
    """The URL options that send the wake-up listener to the test PostgreSQL itself."""
    host, port = os.environ.get("PGHOST", "127.0.0.1"), os.environ.get("PGPORT", "5432")
    return f"listen_host={host}&listen_port={port}"
