"""Run ``ascend-webhooks`` as the benchmarks see it: real processes, real database, REST only.

The benchmarks treat the service as a black box, exactly as a user would: ``serve`` (and, for
PostgreSQL, ``serve --no-delivery`` plus separate ``worker`` processes) started as subprocesses
on a fresh database, an organization, a webhook key and one endpoint created through ``/v1``,
then events published over HTTP. Nothing here imports the service's internals, so a benchmark
measures what an operator would get, and keeps working while those internals change.

Everything is defensive: if the service cannot be started (not installed yet, a route missing,
PostgreSQL absent), :class:`ServiceUnavailable` says why and the caller reports the part as
skipped instead of failing the whole run.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness import EVENT_TYPE, event_data, event_id
from sink import free_port

__all__ = [
    "ADMIN_TOKEN",
    "Service",
    "ServiceUnavailable",
    "postgres_database",
    "running_service",
    "service_command",
]

# Known to the benchmark only; the service never leaves loopback.
ADMIN_TOKEN = "bench-admin-token-6f1d2c3b4a59687766554433"
STARTUP_TIMEOUT = 60.0


class ServiceUnavailable(RuntimeError):
    """The service could not be started or set up here; the message says why."""


def service_command() -> list[str]:
    """How to run the console script of the installed package (the venv's own)."""
    script = Path(sys.executable).with_name("ascend-webhooks")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "ascend_webhooks.cli"]


def check_installed() -> None:
    """Raise ServiceUnavailable unless ``ascend-webhooks serve`` exists in this environment."""
    try:
        import ascend_webhooks.service.commands  # noqa: F401
    except ImportError as exc:
        raise ServiceUnavailable(f"the service is not importable yet ({exc})") from exc
    try:
        result = subprocess.run(
            [*service_command(), "serve", "--help"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceUnavailable(f"`ascend-webhooks serve --help` failed: {exc}") from exc
    if result.returncode != 0:
        raise ServiceUnavailable("`ascend-webhooks serve` is not a command yet")


@dataclass
class Service:
    """A running service: its base URL, an admin client, and what the benchmark created."""

    base_url: str
    workdir: Path
    processes: list[subprocess.Popen[bytes]]
    org: str = ""
    endpoint: str = ""
    http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30.0,
        )

    def call(self, method: str, path: str, expect: Sequence[int], **kwargs: Any) -> Any:
        """One API call; ServiceUnavailable unless the status is one of ``expect``."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"{method} {path}: {exc}") from exc
        if response.status_code not in expect:
            raise ServiceUnavailable(
                f"{method} {path} answered {response.status_code}: {response.text[:300]}"
            )
        return response.json() if response.content else None

    def setup(self, sink_url: str, name: str = "bench") -> None:
        """Create an organization, its first webhook key and one endpoint on the sink."""
        org = self.call("POST", "/v1/organizations", (200, 201), json={"name": name})
        self.org = str(org["id"])
        self.call("POST", f"/v1/organizations/{self.org}/keys", (200, 201), json={})
        endpoint = self.call(
            "POST",
            f"/v1/organizations/{self.org}/endpoints",
            (200, 201),
            json={"url": sink_url, "event_types": None, "description": "bench sink"},
        )
        self.endpoint = str(endpoint["id"])

    @property
    def events_path(self) -> str:
        """Where single events are published."""
        return f"/v1/organizations/{self.org}/events"

    def alive(self) -> str | None:
        """None while every process runs; else which one exited and the tail of its log."""
        for proc in self.processes:
            if proc.poll() is not None:
                tail = self.log_tail()
                return f"a service process exited with {proc.returncode}: {_cause(tail)}\n{tail}"
        return None

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the service's combined log (stderr of every process)."""
        texts = []
        for log in sorted(self.workdir.glob("*.log")):
            texts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(texts)


def _cause(log: str) -> str:
    """The line of a log that says what went wrong (the last error line, else the last line)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):  # a Python exception line names the cause best
        if re.match(r"^[\w.]+(Error|Exception)\b", line):
            return line
    for line in reversed(lines):
        if "error" in line.lower():
            return line
    return lines[-1] if lines else "no output"


def publish_payload(run: str, index: int) -> dict[str, Any]:
    """What the publisher sends for event ``index``: the same ~1 KB event as every bench."""
    return {"id": event_id(run, index), "type": EVENT_TYPE, "data": event_data(index)}


def _wait_healthy(service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if (reason := service.alive()) is not None:
            raise ServiceUnavailable(reason)
        try:
            if service.http.get("/healthz").status_code == 200:
                return
            last = "healthz not 200"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise ServiceUnavailable(f"not healthy after {timeout:g} s ({last}):\n{service.log_tail()}")


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def running_service(
    database_url: str | None = None,
    workers: int = 0,
    *,
    delivery: bool = True,
    extra_env: dict[str, str] | None = None,
    serve_args: Sequence[str] = (),
) -> Iterator[Service]:
    """Start the service on a fresh database and yield it once ``/healthz`` answers 200.

    With ``workers == 0`` one ``serve`` does everything (the embedded default); otherwise
    ``serve --no-delivery`` answers the API and ``workers`` separate ``worker`` processes deliver.
    ``delivery=False`` with no workers runs the API alone (nothing is delivered).
    ``serve_args`` go to ``serve`` as they are (``["--delivery-processes", "2"]``).
    ``database_url`` defaults to a new SQLite file in a temporary directory.
    """
    check_installed()
    workdir = Path(tempfile.mkdtemp(prefix="ascend-bench-service-"))
    env = dict(os.environ)
    env.update(
        {
            "ASCEND_WEBHOOKS_DATABASE_URL": database_url or f"sqlite:///{workdir / 'bench.db'}",
            "ASCEND_WEBHOOKS_ADMIN_TOKEN": ADMIN_TOKEN,
            "ASCEND_WEBHOOKS_ALLOW_HTTP": "1",
            "ASCEND_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "1",
            # One key shared by serve and every worker (PostgreSQL requires it to be given).
            "ASCEND_WEBHOOKS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode("ascii"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra_env or {})
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, args: list[str]) -> None:
        with (workdir / f"{name}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [*service_command(), *args],
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    try:
        serve = ["serve", "--host", "127.0.0.1", "--port", str(port), *serve_args]
        spawn("serve", [*serve, "--no-delivery"] if workers or not delivery else serve)
        service = Service(f"http://127.0.0.1:{port}", workdir, processes)
        try:
            _wait_healthy(service, STARTUP_TIMEOUT)  # serve applies the migrations first
            for n in range(workers):
                spawn(f"worker-{n + 1}", ["worker"])
            time.sleep(0.5 if workers else 0)
            if (reason := service.alive()) is not None:
                raise ServiceUnavailable(reason)
            yield service
        finally:
            service.http.close()
    finally:
        _stop(processes)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (found through the libpq variables), dropped on exit."""
    host = os.environ.get("PGHOST", "127.0.0.1")
    port = os.environ.get("PGPORT", "5432")
    user = os.environ.get("PGUSER", "postgres")
    name = f"ascend_bench_{os.getpid()}_{int(time.time())}"
    psql = shutil.which("psql")
    if psql is None:
        raise ServiceUnavailable("psql is not installed: cannot create a benchmark database")
    base = [psql, "-h", host, "-p", port, "-U", user, "-d", "postgres", "-v", "ON_ERROR_STOP=1"]

    def sql(statement: str) -> None:
        result = subprocess.run(
            [*base, "-c", statement], capture_output=True, timeout=30, check=False
        )
        if result.returncode != 0:
            raise ServiceUnavailable(
                f"PostgreSQL at {host}:{port}: {result.stderr.decode(errors='replace').strip()}"
            )

    sql(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://{user}@{host}:{port}/{name}"
    finally:
        with contextlib.suppress(ServiceUnavailable, subprocess.TimeoutExpired):
            sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
