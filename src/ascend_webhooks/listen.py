"""``ascend-webhooks listen``: a local receiver that verifies and prints every webhook it gets.

For integrators and operators: point an endpoint (or ``ascend-webhooks trigger``) at it and see,
request by request, whether the signature verifies and why not. It answers 200 to a verified
event and 401/400 otherwise, exactly as a correct receiver would, so the sender's retries can be
watched too. ``--status`` makes it answer something else on purpose, to exercise retries.

Standard library only (``http.server``): it is a debugging tool for one developer, not a
production receiver; the framework adapters in :mod:`ascend_webhooks.receiver` are that.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from .diagnose import diagnose
from .signature import DEFAULT_TOLERANCE

__all__ = ["ListenServer", "register_listen"]

_MAX_BODY = 16 * 1024 * 1024  # a receiver for debugging; refuse anything absurd


class ListenServer(ThreadingHTTPServer):
    """An HTTP server that verifies each POST with ``secrets`` and reports it to ``out``."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        secrets: list[str],
        *,
        tolerance: float | None = DEFAULT_TOLERANCE,
        status: int | None = None,
        show_data: bool = True,
        out: TextIO = sys.stdout,
    ) -> None:
        if ":" in address[0]:  # an IPv6 address such as ::1 (the class default is IPv4 only)
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.secrets = secrets
        self.tolerance = tolerance
        self.forced_status = status
        self.show_data = show_data
        self.out = out
        self._lock = threading.Lock()

    def report(self, lines: list[str]) -> None:
        """Print one request's report as a block, never interleaved with another's."""
        with self._lock:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()


class _Handler(BaseHTTPRequestHandler):
    server: ListenServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length")
        if "Transfer-Encoding" in self.headers or length is None:
            # A chunked body is not decoded here: ask for a Content-Length instead.
            self._answer(411, {"error": "a Content-Length is required"}, close=True)
            return
        size = _declared_size(length)
        if size is None:
            self._answer(400, {"error": "the Content-Length is not a number"}, close=True)
            return
        if size > _MAX_BODY:
            self._answer(413, {"error": "the body is too large"}, close=True)
            return
        body = self.rfile.read(size)
        result = diagnose(body, self.headers, self.server.secrets, tolerance=self.server.tolerance)
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        if result.event is not None:
            event = result.event
            status = self.server.forced_status or 200
            lines = [
                f"{stamp} {self.command} {self.path} verified {event.type} {event.id}"
                f" attempt={self.headers.get('X-Ascend-Attempt', '?')} -> {status}"
            ]
            if self.server.show_data:
                lines.append("  " + json.dumps(event.data, ensure_ascii=False)[:2000])
            self.server.report(lines)
            self._answer(status, {"received": True, "id": event.id})
            return
        status = 400 if result.problems and _is_payload_problem(result) else 401
        status = self.server.forced_status or status
        lines = [f"{stamp} {self.command} {self.path} REJECTED -> {status}"]
        lines += [f"  problem: {problem}" for problem in result.problems]
        lines += [f"  hint: {hint}" for hint in result.hints]
        self.server.report(lines)
        self._answer(status, {"error": result.problems[0] if result.problems else "rejected"})

    def _answer(self, status: int, document: dict[str, Any], *, close: bool = False) -> None:
        self.send_response(status)
        if close:
            # The body is left unread: the connection would take it for the next request.
            self.send_header("Connection", "close")
        if status in (204, 304):
            # HTTP forbids a body here (RFC 9110 sections 15.3.5, 15.4.5): the client reads
            # none, and one sent would be taken for the start of the next answer.
            self.end_headers()
            return
        payload = json.dumps(document).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log: the report says everything once."""


def _declared_size(length: str) -> int | None:
    """A Content-Length's value, or None if it is not decimal digits."""
    if not (length.isascii() and length.isdigit()):  # isdigit() alone takes "²"
        return None
    digits = length.lstrip("0")
    # int() refuses strings of more than 4,300 digits; 20 are already far past any limit.
    return int(digits or "0") if len(digits) < 20 else _MAX_BODY + 1


def _is_payload_problem(result: Any) -> bool:
    from .errors import InvalidPayloadError

    return isinstance(result.error, InvalidPayloadError)


def register_listen(sub: Any, run: Any, secrets: Any) -> None:
    """Add ``listen`` to the CLI; ``run`` wraps the handler, ``secrets`` reads --secret/env."""
    from .tools import UsageError, _port, _positive_float

    parser: argparse.ArgumentParser = sub.add_parser(
        "listen",
        help="run a local receiver that verifies and prints every webhook",
        description="Receive webhooks on HOST:PORT, verify each with the webhook key and print "
        "the event or the precise reason it was rejected. Answers 200 to verified events.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=_port, default=9000, help="port to bind (9000; 0: any)")
    parser.add_argument(
        "--secret",
        action="append",
        help="webhook key; repeat during key rotation (default: $ASCEND_WEBHOOKS_SECRET)",
    )
    # Checked here: verify() refuses a tolerance that is not positive on every request.
    freshness = parser.add_mutually_exclusive_group()
    freshness.add_argument(
        "--tolerance",
        type=_positive_float,
        default=DEFAULT_TOLERANCE,
        metavar="N",
        help=f"seconds t may differ from now (default: {DEFAULT_TOLERANCE})",
    )
    freshness.add_argument("--no-tolerance", action="store_true", help="skip the freshness check")
    parser.add_argument("--status", type=int, help="answer this status to every request")
    parser.add_argument("--quiet-data", action="store_true", help="do not print event data")

    def command(args: argparse.Namespace) -> int:
        keys = secrets(args.secret)
        try:
            args.host.encode("idna")  # what bind() does, with a TypeError when it fails
        except UnicodeError:
            raise UsageError(f"--host {args.host!r} is not a host name or address") from None
        # A 1xx is not a final answer: the sender would wait for another one.
        if args.status is not None and not 200 <= args.status <= 599:
            raise UsageError(f"--status must be a final HTTP status (200-599), not {args.status}")
        try:
            server = ListenServer(
                (args.host, args.port),
                keys,
                tolerance=None if args.no_tolerance else args.tolerance,
                status=args.status,
                show_data=not args.quiet_data,
            )
        except OSError as exc:
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
        host, port = server.server_address[:2]
        where = f"[{host!s}]" if server.address_family == socket.AF_INET6 else str(host)
        print(f"listening on http://{where}:{port}/ (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0

    parser.set_defaults(handler=run(command))
