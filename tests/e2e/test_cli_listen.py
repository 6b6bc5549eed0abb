"""``ascend-webhooks listen`` as a real subprocess, fed by ``trigger`` and by raw requests."""

from __future__ import annotations

import http.client
import os
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


def test_trigger_to_listen_is_verified_and_printed(listener: Listener) -> None:
    result = subprocess.run(
        [*_command(), "trigger", "payout.paid", "--url", listener.url, "--secret", SECRET],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    out = listener.output()
    assert "verified payout.paid evt_" in out
    assert "-> 200" in out


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
