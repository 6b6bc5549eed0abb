"""The benchmark sink: a local nginx that answers 200 to every POST and is never the bottleneck.

Every benchmark POSTs to the same kind of receiver, so that figures measured in one run compare
senders and nothing else. nginx (Debian's package) with one worker answers keep-alive POSTs far
faster than any Python sender can make them (wrk reaches tens of thousands per second against
it), reads and discards the body, writes no access log, and keeps a request count in
``stub_status``, which :meth:`Sink.posts` turns into "deliveries the sink has seen".

``nginx_sink()`` starts one on a free loopback port with its own temporary prefix and stops it
on exit::

    with nginx_sink() as sink:
        post_things_to(sink.url)
        sink.wait_for(n)            # until the sink has answered n POSTs since start

Run ``python bench/sink.py`` to start one, check that 1 KB POSTs get 200 on one keep-alive
connection, measure a quick request rate, and stop.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NGINX", "Sink", "SinkError", "free_port", "nginx_sink"]

NGINX = os.environ.get("BENCH_NGINX", "/usr/sbin/nginx")
INSTALL_HINT = "apt-get update && apt-get install -y nginx"
TEMPLATE = Path(__file__).with_name("nginx.conf.template")
STATUS_PATH = "/__sink_status"
_REQUESTS = re.compile(rb"^\s*\d+\s+\d+\s+(\d+)\s*$", re.MULTILINE)


class SinkError(RuntimeError):
    """nginx is missing or would not start; the message says what to do."""


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Sink:
    """A running nginx sink: its URL and a way to count what it has answered."""

    host: str
    port: int
    prefix: Path
    _status_reads: int = 0
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Where senders POST (any path works; this one reads well in logs)."""
        return f"http://{self.host}:{self.port}/hook"

    def requests_total(self) -> int:
        """Every request nginx has handled since start, as stub_status counts them."""
        # One kept-alive connection for polling: a new connection per poll would cost the
        # sink (and the sender sharing its two cores) more than the poll itself.
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                self._conn.request("GET", STATUS_PATH)
                response = self._conn.getresponse()
                body = response.read()
                break
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        self._status_reads += 1
        match = _REQUESTS.search(body)
        if match is None:
            raise SinkError(f"unexpected stub_status answer: {body[:200]!r}")
        return int(match.group(1))

    def posts(self) -> int:
        """Requests answered since start, not counting this sink's own status reads."""
        total = self.requests_total()  # counts the read that is asking, too
        return total - self._status_reads

    def wait_for(self, count: int, timeout: float, poll: float = 0.005) -> float:
        """Block until the sink has seen ``count`` POSTs; return the ``perf_counter`` then.

        Raises TimeoutError (with the count reached) if it takes longer than ``timeout``.
        """
        deadline = time.perf_counter() + timeout
        while True:
            seen = self.posts()
            now = time.perf_counter()
            if seen >= count:
                return now
            if now > deadline:
                raise TimeoutError(f"the sink saw {seen} of {count} POSTs in {timeout:g} s")
            time.sleep(poll)

    def close(self) -> None:
        """Close the polling connection (nginx itself is stopped by ``nginx_sink``)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _render(prefix: Path, port: int) -> Path:
    text = TEMPLATE.read_text(encoding="utf-8")
    conf = prefix / "nginx.conf"
    conf.write_text(text.replace("@PREFIX@", str(prefix)).replace("@PORT@", str(port)))
    return conf


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.02)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)  # graceful: the master waits for its worker
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def nginx_sink() -> Iterator[Sink]:
    """Start nginx on a free loopback port in a temporary prefix; stop it and clean up on exit."""
    if not os.access(NGINX, os.X_OK):
        raise SinkError(f"{NGINX} not found: install it with `{INSTALL_HINT}` (as root)")
    prefix = Path(tempfile.mkdtemp(prefix="ascend-bench-nginx-"))
    # Workers drop to an unprivileged user when nginx starts as root; let them into the prefix.
    prefix.chmod(0o755)
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(5):  # the free port may be taken between probe and bind: try again
            port = free_port()
            conf = _render(prefix, port)
            proc = subprocess.Popen(
                [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if _wait_listening(port, proc):
                break
            _stop(proc)
            proc = None
        if proc is None:
            log = prefix / "error.log"
            detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise SinkError(f"nginx would not start on a loopback port:\n{detail}")
        sink = Sink("127.0.0.1", port, prefix)
        try:
            yield sink
        finally:
            sink.close()
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(prefix, ignore_errors=True)


def _self_check(sink: Sink, seconds: float) -> dict[str, float]:
    """1 KB POSTs on one keep-alive connection: each must be 200, and the count must agree."""
    body = b'{"id":"evt_check","type":"invoice.paid","data":{"pad":"' + b"x" * 970 + b'"}}'
    conn = http.client.HTTPConnection(sink.host, sink.port, timeout=5)
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    before = sink.posts()
    sent = 0
    conn.request("POST", "/hook", body, headers)
    response = conn.getresponse()
    response.read()
    sock = conn.sock
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        conn.request("POST", "/hook", body, headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SinkError(f"the sink answered {response.status} to a POST")
        if conn.sock is not sock:
            raise SinkError("the sink closed a keep-alive connection")
        sent += 1
    elapsed = time.perf_counter() - start
    conn.close()
    seen = sink.posts() - before
    if seen != sent + 1:
        raise SinkError(f"sent {sent + 1} POSTs but the sink counted {seen}")
    return {"posts": sent + 1, "one_connection_per_s": sent / elapsed}


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"id":"evt_wrk","type":"invoice.paid","data":{"pad":"%s"}}'
"""


def wrk_capacity(sink: Sink, seconds: float, connections: int = 64) -> float | None:
    """What the sink answers per second to wrk (C, 1 thread, 1 KB POSTs); None without wrk."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    script = sink.prefix / "post.lua"
    script.write_text(_WRK_SCRIPT % ("x" * 970))
    before = sink.posts()
    result = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), sink.url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    match = re.search(r"Requests/sec:\s*([\d.]+)", result.stdout)
    if result.returncode != 0 or match is None or "Non-2xx" in result.stdout:
        raise SinkError(f"wrk against the sink failed:\n{result.stdout}{result.stderr}")
    if sink.posts() - before <= 0:
        raise SinkError("wrk ran but the sink counted nothing")
    return float(match.group(1))


def main() -> int:
    """Start a sink, check it, measure what it can take, and stop."""
    quick = "--quick" in sys.argv[1:]
    seconds = 0.5 if quick else 2.0
    try:
        with nginx_sink() as sink:
            print(f"sink: {sink.url} (nginx prefix {sink.prefix})")
            figures = _self_check(sink, seconds)
            capacity = wrk_capacity(sink, 1.0 if quick else 5.0)
    except SinkError as exc:
        print(f"sink: {exc}", file=sys.stderr)
        return 1
    print(
        f"sink: {figures['posts']:.0f} POSTs of 1 KB, all 200 on one keep-alive connection, "
        f"counted exactly; {figures['one_connection_per_s']:,.0f}/s from one blocking client"
    )
    if capacity is None:
        print("sink: wrk not installed (apt-get install -y wrk): capacity not measured")
    else:
        print(f"sink: wrk (C, 1 thread, 64 connections) got {capacity:,.0f} POSTs/s answered")
    from harness import write_result

    result: dict[str, float | None] = {**figures, "wrk_posts_per_s": capacity}
    print(f"wrote {write_result('sink', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
