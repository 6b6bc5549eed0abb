"""``ascend-webhooks listen`` as a real subprocess, fed by ``trigger`` and by raw requests."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ascend_webhooks import sign

SECRET = "whsec_listen_test"
CLI = Path(sys.executable).with_name("ascend-webhooks")


def _command() -> list[str]:
    return [str(CLI)] if CLI.exists() else [sys.executable, "-m", "ascend_webhooks.cli"]


class Listener:
    def __init__(self, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "ASCEND_WEBHOOKS_SECRET"}
        self.process = subprocess.Popen(
            [*_command(), "listen", "--port", "0", "--secret", SECRET, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        assert first.startswith("listening on http://"), first
        self.url = first.split()[2]
        self.port = int(self.url.rstrip("/").rsplit(":", 1)[1])

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", "/hook", body, {"Content-Type": "application/json", **headers})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)  # reaps the process and closes its pipes

    def output(self) -> str:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        return out


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def trigger(event_type: str, url: str) -> None:
    """``ascend-webhooks trigger`` of a signed sample to ``url``, which must answer 200."""
    result = subprocess.run(
        [*_command(), "trigger", event_type, "--url", url, "--secret", SECRET],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_trigger_to_listen_is_verified_and_printed(listener: Listener) -> None:
    trigger("payout.paid", listener.url)
    out = listener.output()
    assert "verified payout.paid evt_" in out
    assert "-> 200" in out


def test_listens_on_ipv6_loopback_too() -> None:
    # It bound IPv4 sockets only: `--host ::1` was refused as an address of the wrong family.
    server = Listener("--host", "::1")
    try:
        assert server.url.startswith("http://[::1]:"), server.url
        trigger("invoice.paid", server.url)
        assert "verified invoice.paid evt_" in server.output()
    finally:
        server.close()


def test_wrong_key_is_rejected_with_the_reason(listener: Listener) -> None:
    body = b'{"id":"evt_1","type":"invoice.paid","data":{}}'
    assert listener.post(body, sign(body, "whsec_other")) == 401
    out = listener.output()
    assert "REJECTED -> 401" in out
    assert "problem:" in out


def test_tampered_body_and_bad_payload(listener: Listener) -> None:
    body = b'{"id":"evt_2","type":"invoice.paid","data":{}}'
    headers = sign(body, SECRET)
    assert listener.post(body + b" ", headers) == 401
    not_event = b"[1, 2]"
    assert listener.post(not_event, sign(not_event, SECRET)) == 400
    assert listener.post(body, headers) == 200


def test_forced_status_makes_the_sender_retry() -> None:
    server = Listener("--status", "503")
    try:
        body = b'{"id":"evt_3","type":"refund.paid","data":{}}'
        started = time.monotonic()
        assert server.post(body, sign(body, SECRET)) == 503
        assert time.monotonic() - started < 5
        assert "verified refund.paid evt_3" in server.output()
    finally:
        server.close()


def test_busy_port_is_one_line_and_non_zero(listener: Listener) -> None:
    result = subprocess.run(
        [*_command(), "listen", "--port", str(listener.port), "--secret", SECRET],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--tolerance", "0"],
        ["--tolerance", "-5"],
        ["--tolerance", "nan"],
        ["--port", "70000"],
        ["--port", "-1"],
        ["--secret", "\udcff"],  # a byte that is not UTF-8: no key verify() can use
        ["--host", "\udcff"],
    ],
)
def test_bad_option_values_are_refused_at_start(args: list[str]) -> None:
    # Each used to start: a bad tolerance then failed every request, a bad port tracebacked.
    result = subprocess.run(
        [*_command(), "listen", "--secret", SECRET, *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2
    assert args[0] in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_no_tolerance_takes_an_old_timestamp() -> None:
    server = Listener("--no-tolerance")
    try:
        body = b'{"id":"evt_4","type":"refund.paid","data":{}}'
        assert server.post(body, sign(body, SECRET, 1_000_000_000)) == 200
        assert "verified refund.paid evt_4" in server.output()
    finally:
        server.close()


def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on one connection and read everything until the listener closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:  # the listener closed with the unread body pending
            pass
    return received


@pytest.mark.parametrize(
    ("framing", "status"),
    [
        (b"Transfer-Encoding: chunked\r\n", b"411"),
        (b"Content-Length: 99999999999\r\n", b"413"),
    ],
)
def test_an_unread_body_is_not_taken_for_a_request(
    listener: Listener, framing: bytes, status: bytes
) -> None:
    # The body of a refused request is left unread: kept open, the connection would read it
    # as the next request, here a second POST hidden in the first one's body.
    hidden = b"POST /hidden HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    if framing.startswith(b"Transfer-Encoding"):
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(hidden), hidden)
    else:
        body = hidden
    request = b"POST /hook HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n" + body
    received = _raw_exchange(listener.port, request)
    assert received.startswith(b"HTTP/1.1 " + status), received
    head, _, rest = received.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert len(rest) == length, received  # one answer, then the end of the connection
    assert "/hidden" not in listener.output()


@pytest.mark.parametrize(
    ("length", "status"),
    [("abc", b"400"), ("\u00b2", b"400"), ("9" * 5000, b"413"), ("0" * 5000 + "2", b"401")],
)
def test_a_content_length_of_any_form_gets_an_answer(
    listener: Listener, length: str, status: bytes
) -> None:
    # "\u00b2" passes str.isdigit() and int() refuses 5,000 digits: both raised inside the
    # handler, which then answered nothing. Zeros ahead change no value (RFC 9112: 1*DIGIT).
    request = b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n{}" % (
        length.encode("latin-1")
    )
    received = _raw_exchange(listener.port, request + b"POST /again HTTP/1.1\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 " + status), received


@pytest.mark.parametrize("status", ["204", "304"])
def test_a_status_without_a_body_keeps_the_connection_usable(status: str) -> None:
    server = Listener("--status", status)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for number in range(2):  # the same connection twice: no stray body between answers
            body = b'{"id":"evt_%d","type":"refund.paid","data":{}}' % number
            conn.request("POST", "/hook", body, sign(body, SECRET))
            response = conn.getresponse()
            assert response.status == int(status)
            assert response.read() == b""
            assert response.getheader("Content-Length") is None
    finally:
        conn.close()
        server.close()


def test_an_informational_status_is_refused() -> None:
    result = subprocess.run(
        [*_command(), "listen", "--secret", SECRET, "--status", "101"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "--status" in line
