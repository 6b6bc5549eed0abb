"""``ascend-webhooks trigger`` and ``verify`` as real subprocesses against a real local receiver."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ascend_webhooks import WebhookError, verify
from ascend_webhooks.samples import EVENT_TYPES, sample_data

SECRET = "whsec_e2e_clé"
SIG = "X-Ascend-Signature"
TS_HEADER = "X-Ascend-Request-Timestamp"
CLI = Path(sys.executable).with_name("ascend-webhooks")


def run_cli(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "ascend_webhooks.cli"]
    environment = {k: v for k, v in os.environ.items() if k != "ASCEND_WEBHOOKS_SECRET"}
    result = subprocess.run(
        [*command, *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment, **(env or {})},
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


@dataclass
class Capture:
    request_line: str
    headers: list[tuple[str, str]]
    body: bytes
    verdict: str  # "ok: <id> <type>" or the verification error


@dataclass
class Receiver:
    """A receiver written the way the SDK tells organizations to: verify() on the raw body."""

    url: str
    status: int = 200
    delay: float = 0.0
    location: str | None = None
    captures: list[Capture] = field(default_factory=list)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                event = verify(body, self.headers, SECRET)
            except WebhookError as exc:
                verdict = f"{type(exc).__name__}: {exc}"
            else:
                verdict = f"ok: {event.id} {event.type}"
            receiver.captures.append(
                Capture(self.requestline, list(self.headers.items()), body, verdict)
            )
            time.sleep(receiver.delay)
            status = receiver.status if verdict.startswith("ok") else 401
            self.send_response(status)
            if receiver.location:
                self.send_header("Location", receiver.location)
            answer = json.dumps({"received": verdict}).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output quiet

    return Handler


def _serve(receiver: Receiver, server: ThreadingHTTPServer) -> Iterator[Receiver]:
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box = Receiver(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(box))
    server.daemon_threads = True
    box.url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/ascend?source=cli"
    yield from _serve(box, server)


@dataclass
class TLSReceiver:
    receiver: Receiver
    ca_file: Path


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[TLSReceiver]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    box = Receiver(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(box))
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    box.url = f"https://localhost:{server.server_address[1]}/hook"
    for served in _serve(box, server):
        yield TLSReceiver(served, ca_file)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# -- trigger -------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_trigger_each_type_is_verified_by_the_receiver(receiver: Receiver, event_type: str) -> None:
    result = run_cli(
        "trigger", event_type, "--url", receiver.url, "--secret", SECRET, "--id", "evt_e2e"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "evt_e2e" in result.stdout
    assert event_type in result.stdout
    assert "HTTP 200" in result.stdout
    assert "received" in result.stdout  # an excerpt of the response body
    [capture] = receiver.captures
    assert capture.verdict == f"ok: evt_e2e {event_type}"
    assert capture.request_line == "POST /webhooks/ascend?source=cli HTTP/1.1"
    headers = dict(capture.headers)
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Ascend-Event-Type"] == event_type
    assert headers["X-Ascend-Event-Id"] == "evt_e2e"
    assert headers["User-Agent"].startswith("ascend-webhooks/")
    event = json.loads(capture.body)
    assert event == {"id": "evt_e2e", "type": event_type, "data": sample_data(event_type)}
    assert event["data"]  # every documented type has realistic sample data


def test_trigger_with_custom_data_and_a_generated_id(receiver: Receiver) -> None:
    data = {"note": "日本 é 🎉", "amount_cents": 1200}
    result = run_cli(
        "trigger", "refund.paid", "--url", receiver.url, "--secret", SECRET,
        "--data", json.dumps(data, ensure_ascii=False),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [capture] = receiver.captures
    event = json.loads(capture.body)
    assert event["data"] == data
    assert event["id"].startswith("evt_")
    assert event["id"] in result.stdout
    assert capture.verdict.startswith("ok:")


def test_trigger_takes_the_secret_from_the_environment(receiver: Receiver) -> None:
    env = {"ASCEND_WEBHOOKS_SECRET": SECRET}
    result = run_cli("trigger", "payout.failed", "--url", receiver.url, env=env)
    assert result.returncode == 0, result.stderr
    assert receiver.captures[0].verdict.startswith("ok:")
    missing = run_cli("trigger", "payout.failed", "--url", receiver.url)
    assert missing.returncode == 2
    assert "ASCEND_WEBHOOKS_SECRET" in one_line(missing.stderr)
    assert len(receiver.captures) == 1


def test_trigger_unknown_type_warns_and_sends_empty_data(receiver: Receiver) -> None:
    result = run_cli("trigger", "policy.renewed", "--url", receiver.url, "--secret", SECRET)
    assert result.returncode == 0
    assert "warning" in one_line(result.stderr)
    assert json.loads(receiver.captures[0].body)["data"] == {}


@pytest.mark.parametrize(("status", "word"), [(500, "500"), (204, "204"), (401, "401")])
def test_trigger_fails_on_anything_but_200(receiver: Receiver, status: int, word: str) -> None:
    receiver.status = status
    result = run_cli("trigger", "invoice.paid", "--url", receiver.url, "--secret", SECRET)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert word in line
    assert "200" in line
    assert len(receiver.captures) == 1


def test_trigger_does_not_follow_redirects(receiver: Receiver) -> None:
    receiver.status = 307
    receiver.location = receiver.url + "&again=1"
    result = run_cli("trigger", "invoice.paid", "--url", receiver.url, "--secret", SECRET)
    assert result.returncode == 1
    assert "redirect" in one_line(result.stderr)
    assert len(receiver.captures) == 1  # no second request


def test_trigger_with_the_wrong_secret_gets_401(receiver: Receiver) -> None:
    result = run_cli("trigger", "invoice.paid", "--url", receiver.url, "--secret", "nope")
    assert result.returncode == 1
    assert "401" in one_line(result.stderr)
    assert receiver.captures[0].verdict.startswith("SignatureVerificationError")


def test_trigger_connection_refused_is_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli(
        "trigger", "invoice.paid", "--url", f"http://127.0.0.1:{port}/", "--secret", "s"
    )
    assert result.returncode == 1
    assert "refused" in one_line(result.stderr)


def test_trigger_timeout_is_one_line(receiver: Receiver) -> None:
    receiver.delay = 3
    started = time.monotonic()
    result = run_cli(
        "trigger", "invoice.paid", "--url", receiver.url, "--secret", SECRET, "--timeout", "0.5"
    )
    assert time.monotonic() - started < 3
    assert result.returncode == 1
    assert "timeout" in one_line(result.stderr)


def test_trigger_https_with_a_private_ca(tls_receiver: TLSReceiver) -> None:
    url = tls_receiver.receiver.url
    trusted = run_cli(
        "trigger", "payout.paid", "--url", url, "--secret", SECRET,
        "--ca-file", str(tls_receiver.ca_file),
    )  # fmt: skip
    assert trusted.returncode == 0, trusted.stderr
    assert tls_receiver.receiver.captures[0].verdict.startswith("ok:")

    untrusted = run_cli("trigger", "payout.paid", "--url", url, "--secret", SECRET)
    assert untrusted.returncode == 1
    line = one_line(untrusted.stderr)
    assert "TLS" in line
    assert "certificate" in line

    insecure = run_cli("trigger", "payout.paid", "--url", url, "--secret", SECRET, "--insecure")
    assert insecure.returncode == 0, insecure.stderr
    assert len(tls_receiver.receiver.captures) == 2


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--data", "{not json"], "not valid JSON"),
        (["--data", "[1, 2]"], "JSON object"),
        (["--data", '{"x": NaN}'], "not valid JSON"),
        (["--secret", ""], "secret"),
        (["--url", "ftp://127.0.0.1/x"], "http"),
        (["--url", "127.0.0.1:8000"], "http"),
        (["--url", "http://127.0.0.1:99999/"], "port"),
        (["--url", "http://127.0.0.1:0/"], "port"),
        (["--url", "http://[::1"], "--url"),
        (["--url", "http://exa mple.com/"], "whitespace"),
        (["--url", "http://127.0.0.1:1/é"], "ASCII"),
        (["--url", "http://a..b/"], "host"),
        (["--ca-file", "/nonexistent/ca.pem"], "ca-file"),
        (["--id", "a\nb"], "--id"),
        (["--id", "evt é"], "--id"),
        (["--data", '{"a": 1e999}'], "1e999"),
        (["--data", '{"a": "\\ud800"}'], "UTF-8"),
        (["--data", '{"a": "\udcff"}'], "UTF-8"),  # a byte of argv that is not UTF-8
        (["--secret", "\udcff"], "UTF-8"),
    ],
)
def test_trigger_usage_errors_exit_2_with_one_line(
    receiver: Receiver, args: list[str], reason: str
) -> None:
    options = {"--url": receiver.url, "--secret": SECRET}
    options.update(dict(zip(args[::2], args[1::2], strict=True)))
    flat = [item for pair in options.items() for item in pair]
    result = run_cli("trigger", "invoice.paid", *flat)
    assert result.returncode == 2
    assert reason in one_line(result.stderr)
    assert receiver.captures == []


def test_trigger_to_an_ipv6_literal_without_a_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # http.client, given "::1" and no port, takes ":" for the host and 1 for the port.
    from ascend_webhooks.tools import DeliveryError, send_event

    opened: list[tuple[str, int | None]] = []

    class Connection(http.client.HTTPConnection):
        def request(self, *args: Any, **kwargs: Any) -> None:
            opened.append((self.host, self.port))
            raise ConnectionRefusedError

    monkeypatch.setattr(http.client, "HTTPConnection", Connection)
    with pytest.raises(DeliveryError, match=r"refused by \[::1\]:80"):
        send_event("http://[::1]/hook", b"{}", SECRET, "evt_1", "invoice.paid")
    assert opened == [("::1", 80)]


@pytest.mark.parametrize("event_type", ["invoice.€", "invoice paid", "invoice.\udcff", ""])
def test_trigger_refuses_a_type_the_api_would_refuse(receiver: Receiver, event_type: str) -> None:
    # Types travel in the X-Ascend-Event-Type header: the API takes visible ASCII only.
    result = run_cli("trigger", event_type, "--url", receiver.url, "--secret", SECRET)
    assert result.returncode == 2
    assert "TYPE" in one_line(result.stderr)
    assert receiver.captures == []


# -- verify --------------------------------------------------------------------------------


@pytest.fixture
def capture(receiver: Receiver, tmp_path: Path) -> tuple[Path, Path, Capture]:
    """A real request sent by trigger and captured by the receiver, saved as two files."""
    result = run_cli("trigger", "invoice.created", "--url", receiver.url, "--secret", SECRET)
    assert result.returncode == 0, result.stderr
    [captured] = receiver.captures
    headers_file = tmp_path / "headers.txt"
    lines = [captured.request_line] + [f"{k}: {v}" for k, v in captured.headers]
    headers_file.write_text("\r\n".join(lines) + "\r\n")
    body_file = tmp_path / "body.json"
    body_file.write_bytes(captured.body)
    return headers_file, body_file, captured


def test_verify_a_valid_capture(capture: tuple[Path, Path, Capture]) -> None:
    headers_file, body_file, captured = capture
    result = run_cli(
        "verify", "--secret", SECRET, "--headers-file", str(headers_file),
        "--body-file", str(body_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    event_id = json.loads(captured.body)["id"]
    assert f"valid: event {event_id} (invoice.created)" in result.stdout


def test_verify_a_whole_raw_request_and_key_rotation(
    capture: tuple[Path, Path, Capture], tmp_path: Path
) -> None:
    headers_file, _, captured = capture
    request = tmp_path / "request.http"
    request.write_bytes(headers_file.read_bytes() + b"\r\n" + captured.body)
    result = run_cli(
        "verify", "--secret", "old-key", "--secret", SECRET, "--headers-file", str(request)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "secret 2" in result.stdout


def test_verify_takes_a_repeated_header_other_than_the_signature(
    capture: tuple[Path, Path, Capture],
) -> None:
    # HTTP lets a field repeat (proxies each add a Via); only two signatures are ambiguous.
    headers_file, body_file, _ = capture
    headers_file.write_bytes(headers_file.read_bytes() + b"Via: 1.1 edge\r\nvia: 1.1 proxy\r\n")
    result = run_cli(
        "verify", "--secret", SECRET, "--headers-file", str(headers_file),
        "--body-file", str(body_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_verify_tampered_body_says_the_signature_does_not_match(
    capture: tuple[Path, Path, Capture],
) -> None:
    headers_file, body_file, captured = capture
    body_file.write_bytes(captured.body.replace(b"1284350", b"1284351"))
    result = run_cli(
        "verify", "--secret", SECRET, "--headers-file", str(headers_file),
        "--body-file", str(body_file),
    )  # fmt: skip
    assert result.returncode == 1
    assert "no v1 matches" in one_line(result.stderr)
    assert "expected with the secret: v1=" in result.stdout


def test_verify_points_at_a_trailing_newline_added_by_the_capture(
    capture: tuple[Path, Path, Capture],
) -> None:
    headers_file, body_file, captured = capture
    body_file.write_bytes(captured.body + b"\n")
    result = run_cli(
        "verify", "--secret", SECRET, "--headers-file", str(headers_file),
        "--body-file", str(body_file),
    )  # fmt: skip
    assert result.returncode == 1
    assert "trailing newline" in result.stdout


def test_verify_reports_staleness_by_how_much(capture: tuple[Path, Path, Capture]) -> None:
    headers_file, body_file, captured = capture
    ts = int(dict(captured.headers)["X-Ascend-Request-Timestamp"])
    base = ["verify", "--secret", SECRET, "--headers-file", str(headers_file)]
    base += ["--body-file", str(body_file)]
    stale = run_cli(*base, "--now", str(ts + 1000))
    assert stale.returncode == 1
    assert "stale by 700 s" in one_line(stale.stderr)
    assert run_cli(*base, "--now", str(ts + 1000), "--tolerance", "1000").returncode == 0
    assert run_cli(*base, "--now", str(ts + 10**6), "--no-tolerance").returncode == 0
    future = run_cli(*base, "--now", str(ts - 400))
    assert future.returncode == 1
    assert "from the future by 100 s" in one_line(future.stderr)


@pytest.mark.parametrize(
    ("signature", "timestamp", "reason"),
    [
        (None, "1657323346", "X-Ascend-Signature header is missing"),
        ("t=1657323346", "1657323346", "no v1"),
        ("v1=" + "0" * 64, None, "no t="),
        ("t=+1657323346,v1=" + "0" * 64, None, "decimal digits only"),
        ("t=1657323346,t=1657323346,v1=" + "0" * 64, None, "exactly one"),
        ("t=1657323346,v1=abc", None, "64 lowercase hex"),
        ("t=1657323346,v1=" + "A" * 64, None, "uppercase"),
        ("t=1657323346,v1=" + "0" * 64, "0165732334", "timestamp mismatch"),
    ],
)
def test_verify_says_precisely_what_is_wrong_with_the_headers(
    signature: str | None, timestamp: str | None, reason: str
) -> None:
    args = ["verify", "--secret", SECRET, "--body", '{"id":"e","type":"t","data":{}}']
    args += ["--now", "1657323346", "--header", "Content-Type: application/json"]
    if signature is not None:
        args += ["--header", f"X-Ascend-Signature: {signature}"]
    if timestamp is not None:
        args += ["--header", f"x-ascend-request-timestamp: {timestamp}"]
    result = run_cli(*args)
    assert result.returncode == 1
    assert reason in one_line(result.stderr)


def test_verify_reports_a_signed_body_that_is_not_an_event(tmp_path: Path) -> None:
    from ascend_webhooks import sign

    body = b'{"id": 7, "type": "invoice.paid", "data": {}}'
    headers = sign(body, SECRET)
    args = ["verify", "--secret", SECRET, "--body-file", "-"]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    result = run_cli(*args, stdin=body)
    assert result.returncode == 1
    assert '"id" must be a string' in one_line(result.stderr)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--header", "X-Ascend-Signature: t=1,v1=00"], "body"),
        (["--body", "{}"], "header"),
        (["--body", "{}", "--header", "no colon here"], "Name: value"),
        (
            ["--body", "{}", "--header", f"{SIG}: t=1,v1=00", "--header", f"{SIG.lower()}: t=2"],
            "twice",
        ),
        (["--body", "{}", "--header", f"{TS_HEADER}: 1", "--header", f"{TS_HEADER}: 1"], "twice"),
        (["--body-file", "/nonexistent/body", "--header", "A: 1"], "cannot read"),
        (["--body", "{}", "--header", "A: 1", "--secret", ""], "secret"),
        (["--body", "{}", "--header", "A: 1", "--secret", "\udcff"], "UTF-8"),
    ],
)
def test_verify_usage_errors_exit_2(args: list[str], reason: str) -> None:
    result = run_cli("verify", "--secret", SECRET, *args)
    assert result.returncode == 2
    assert reason in one_line(result.stderr)


def test_verify_bad_option_values_exit_2() -> None:
    for bad in (["--tolerance", "0"], ["--tolerance", "x"], ["--now", "nan"]):
        result = run_cli("verify", "--secret", SECRET, "--body", "{}", "--header", "A: 1", *bad)
        assert result.returncode == 2
