"""Integrator commands of the CLI: ``trigger`` (send one signed sample event to a URL) and
``verify`` (check a captured request and say why it fails).

Standard library only (``http.client`` and ``ssl``), so that an organization can test its
receiver with nothing but ``pip install ascend-webhooks``. ``http.client`` rather than
``urllib.request`` because urllib follows redirects, and for Ascend a redirect is a failed
delivery, which the trigger must show as such. Exit statuses: 0 success, 1 the delivery or the
verification failed, 2 a usage error; every failure is explained in one line on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from . import __version__
from .diagnose import diagnose
from .event import EVENT_ID_PATTERN, EVENT_TYPE_PATTERN
from .ids import new_id
from .samples import EVENT_TYPES, sample_body, sample_data
from .signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

__all__ = ["register_tools", "send_event"]

_EXCERPT = 300  # characters of the response body shown
SECRET_ENV = "ASCEND_WEBHOOKS_SECRET"  # noqa: S105 - the name of a variable, not a secret
# The API's rules for event ids and types: both travel in headers, so trigger sends only what
# Ascend itself could.
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
_EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN)
_SIGNATURE_HEADERS = frozenset({SIGNATURE_HEADER.lower(), TIMESTAMP_HEADER.lower()})


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""


class DeliveryError(Exception):
    """The request could not be sent or got no answer: exit status 1."""


def register_tools(sub: Any) -> None:
    """Add the integrator sub-commands to the CLI's sub-parsers."""
    from .listen import register_listen

    _register_trigger(sub)
    _register_verify(sub)
    register_listen(sub, _run, _secrets)


# -- trigger -------------------------------------------------------------------------------


def _register_trigger(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "trigger",
        help="send one signed sample event straight to a URL",
        description="Send one signed Ascend event to URL, as the delivery service would, and "
        "report the answer. Exits 0 only if the endpoint answers exactly 200.",
        epilog="Event types with sample data: " + ", ".join(EVENT_TYPES),
    )
    parser.add_argument("type", metavar="TYPE", help="the event type, e.g. invoice.paid")
    parser.add_argument("--url", required=True, help="the endpoint, http:// or https://")
    parser.add_argument("--secret", help=f"the webhook key to sign with (default: ${SECRET_ENV})")
    parser.add_argument("--data", metavar="JSON", help="the event data (a JSON object)")
    parser.add_argument("--id", dest="event_id", metavar="ID", help="the event id (default: new)")
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="seconds to wait for each step: connect, send, answer (default: 10)",
    )
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true", help="do not check the TLS certificate")
    tls.add_argument("--ca-file", metavar="PEM", help="trust the CA certificates in this file")
    parser.set_defaults(handler=_run(_trigger))


def _trigger(args: argparse.Namespace) -> int:
    # Every argument is checked before anything is printed or sent.
    secret = _secrets([args.secret] if args.secret is not None else None)[0]
    _check_event(args.event_id, args.type)
    data = sample_data(args.type) if args.data is None else _parse_data(args.data)
    _split_url(args.url)
    if args.type not in EVENT_TYPES:
        print(
            f"warning: {args.type!r} is not one of the documented Ascend event types; "
            + ("sending it with the given data" if args.data else "sending it with empty data"),
            file=sys.stderr,
        )
    event_id = args.event_id or new_id("evt")
    body = sample_body(event_id, args.type, data)
    context = _tls_context(args.insecure, args.ca_file)
    print(f"POST {args.url}  event {event_id} ({args.type}), {len(body)} bytes")
    started = time.monotonic()
    status, reason, answer = send_event(
        args.url, body, secret, event_id, args.type, timeout=args.timeout, context=context
    )
    elapsed = (time.monotonic() - started) * 1000
    print(f"HTTP {status} {reason} in {elapsed:.0f} ms")
    excerpt = _excerpt(answer)
    if excerpt:
        print(f"response body: {excerpt}")
    if status == 200:
        print("delivered: the endpoint answered 200")
        return 0
    detail = "a redirect is not followed" if 300 <= status < 400 else "only 200 counts"
    print(f"failed: the endpoint answered {status} {reason} ({detail})", file=sys.stderr)
    return 1


def send_event(
    url: str,
    body: bytes,
    secret: str,
    event_id: str,
    event_type: str,
    *,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> tuple[int, str, bytes]:
    """POST one signed event to ``url``; return (status, reason, body) or raise DeliveryError.

    Raises UsageError for a URL, id or type that cannot be sent.
    """
    _check_event(event_id, event_type)
    parts, host, port = _split_url(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"ascend-webhooks/{__version__}",
        "X-Ascend-Event-Id": event_id,
        "X-Ascend-Event-Type": event_type,
        "X-Ascend-Attempt": "1",
        **sign(body, secret),
    }
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read(64 * 1024)
        return response.status, response.reason, answer
    except ConnectionRefusedError:
        raise DeliveryError(f"connection refused by {where}") from None
    except ConnectionResetError:
        raise DeliveryError(f"connection reset by {where}") from None
    except TimeoutError:
        raise DeliveryError(f"no answer from {where} within {timeout:g} s (timeout)") from None
    except ssl.SSLCertVerificationError as exc:
        message = exc.verify_message or exc.reason or str(exc)
        raise DeliveryError(
            f"TLS error with {where}: certificate not trusted ({message}); "
            "use --ca-file PEM for a private CA"
        ) from None
    except ssl.SSLError as exc:
        raise DeliveryError(f"TLS error with {where}: {exc.reason or exc}") from None
    except socket.gaierror as exc:
        raise DeliveryError(f"cannot resolve {host!r}: {exc.strerror}") from None
    except http.client.HTTPException as exc:
        raise DeliveryError(f"bad HTTP answer from {where}: {type(exc).__name__} {exc}") from None
    except OSError as exc:
        raise DeliveryError(f"cannot reach {where}: {exc.strerror or exc}") from None
    finally:
        connection.close()


def _check_event(event_id: str | None, event_type: str) -> None:
    if not _EVENT_TYPE.fullmatch(event_type):
        raise UsageError(
            f"TYPE must be 1 to 200 visible ASCII characters, as the API takes, not {event_type!r}"
        )
    if event_id is not None and not _EVENT_ID.fullmatch(event_id):
        raise UsageError(
            f"--id must be 1 to 255 of A-Z a-z 0-9 . _ : ~ -, as the API takes, not {event_id!r}"
        )


def _split_url(url: str) -> tuple[SplitResult, str, int]:
    """The parts, host and port of --url, or UsageError: nothing http.client would refuse."""
    if not url.isascii():
        raise UsageError(
            "--url must be ASCII: percent-encode its path and query, and write an "
            "internationalized host name in its xn-- form"
        )
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UsageError("--url must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [IPv6 literal
        raise UsageError(f"--url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url must be an http:// or https:// URL, not {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"--url has an invalid port: {exc}") from None
    if port == 0:
        raise UsageError("--url has an invalid port: 0")
    host = parts.hostname
    try:
        host.encode("idna")  # what the resolver is given: no empty label, none over 63
    except UnicodeError:
        raise UsageError(f"--url has an invalid host name: {host!r}") from None
    # The port always given: http.client would take the last ":1" of "[::1]" for a port.
    return parts, host, port or (443 if parts.scheme == "https" else 80)


def _parse_data(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_number)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"--data is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--data must be a JSON object, not {type(data).__name__}")
    try:
        # The body goes as UTF-8 (sample_body()), which has no form for a lone surrogate: a
        # "\ud800" escape, or a byte of the command line that was not UTF-8.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise UsageError(f"--data holds {bad!r}, which is not text UTF-8 can carry") from None
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: JSON has no infinity to send it as
        raise ValueError(f"the number {text} is out of range")
    return value


def _tls_context(insecure: bool, ca_file: str | None) -> ssl.SSLContext:
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load --ca-file {ca_file}: {exc}") from None


def _excerpt(answer: bytes) -> str:
    text = answer.decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


# -- verify --------------------------------------------------------------------------------


def _register_verify(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "verify",
        help="check a captured request (headers + body) and say why it fails",
        description="Check a captured request exactly as a receiver calling verify() would, "
        "and explain every problem found. Exit status: 0 valid, 1 invalid, 2 usage error.",
    )
    parser.add_argument(
        "--secret",
        action="append",
        help=f"a webhook key; repeat it to try several (key rotation; default: ${SECRET_ENV})",
    )
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--body-file", metavar="F", help="the raw body, byte for byte ('-': stdin)")
    body.add_argument("--body", metavar="STR", help="the raw body as a string (UTF-8)")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar='"NAME: VALUE"',
        help="a request header; repeat it for each",
    )
    parser.add_argument(
        "--headers-file",
        metavar="F",
        help="raw HTTP header lines (a request line is skipped); if the file holds a whole "
        "request, what follows the blank line is the body",
    )
    freshness = parser.add_mutually_exclusive_group()
    freshness.add_argument(
        "--tolerance",
        type=_positive_float,
        default=300.0,
        metavar="N",
        help="seconds t may differ from now (default: 300)",
    )
    freshness.add_argument("--no-tolerance", action="store_true", help="skip the freshness check")
    parser.add_argument(
        "--now", type=_finite_float, metavar="TS", help="Unix time to check against"
    )
    parser.set_defaults(handler=_run(_verify))


def _verify(args: argparse.Namespace) -> int:
    secrets = _secrets(args.secret)
    headers: dict[str, str] = {}
    captured_body: bytes | None = None
    if args.headers_file:
        captured_body = _read_headers_file(Path(args.headers_file), headers)
    for line in args.header:
        _add_header(headers, line, "--header")
    if args.body is not None:
        body = args.body.encode("utf-8", "surrogateescape")
    elif args.body_file is not None:
        body = _read_body(args.body_file)
    elif captured_body is not None:
        body = captured_body
    else:
        raise UsageError("give the raw body with --body-file F or --body STR")
    if not headers:
        raise UsageError('give the request headers with --header "NAME: VALUE" or --headers-file')

    tolerance = None if args.no_tolerance else args.tolerance
    result = diagnose(body, headers, secrets, tolerance=tolerance, now=args.now)
    for note in result.notes:
        print(f"  {note}")
    for problem in result.problems:
        print(f"problem: {problem}")
    for hint in result.hints:
        print(f"hint: {hint}")
    if result.event is not None:
        print(f"valid: event {result.event.id} ({result.event.type})")
        return 0
    print(f"invalid: {result.problems[0]}", file=sys.stderr)
    return 1


def _read_headers_file(path: Path, headers: dict[str, str]) -> bytes | None:
    raw = _read_file(path, "--headers-file")
    # The head ends at the first blank line; the body after it is kept byte for byte.
    ends = [(i, len(mark)) for mark in (b"\r\n\r\n", b"\n\n") if (i := raw.find(mark)) >= 0]
    if ends:
        index, length = min(ends)
        head, rest = raw[:index], raw[index + length :]
    else:
        head, rest = raw, b""
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    if lines and " HTTP/" in lines[0] and ":" not in lines[0].split(" ", 1)[0]:
        lines = lines[1:]  # the request line: POST /path HTTP/1.1
    for line in lines:
        if line.strip():
            _add_header(headers, line, str(path))
    return rest or None


def _add_header(headers: dict[str, str], line: str, where: str) -> None:
    name, sep, value = line.partition(":")
    if not sep or not name.strip() or name != name.strip():
        raise UsageError(f"{where}: {line!r} is not a 'Name: value' header line")
    # HTTP drops the whitespace around a field value (RFC 9110 section 5.5).
    value = value.strip(" \t\r")
    existing = next((key for key in headers if key.lower() == name.lower()), None)
    if existing is None:
        headers[name] = value
    elif name.lower() in _SIGNATURE_HEADERS:
        # Which of two a receiver reads depends on its framework: no verdict would be its own.
        raise UsageError(f"{where}: the {name} header is given twice")
    else:
        # Any other field may repeat (a Via per proxy): one list, as RFC 9110 section 5.3 joins.
        headers[existing] += ", " + value


def _read_body(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    return _read_file(Path(name), "--body-file")


def _read_file(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {option} {path}: {exc.strerror or exc}") from None


# -- shared --------------------------------------------------------------------------------


def _secrets(given: list[str] | None) -> list[str]:
    """The --secret values, or the environment's: a secret in argv shows in `ps` and history."""
    if given is None:
        from_env = os.environ.get(SECRET_ENV)
        if from_env is None:
            raise UsageError(f"give the webhook key with --secret S or ${SECRET_ENV}")
        given = [from_env]
    if any(not secret for secret in given):
        raise UsageError("the webhook key (--secret) must not be empty")
    for secret in given:
        try:
            secret.encode("utf-8")  # what sign() and verify() make of it
        except UnicodeEncodeError:  # bytes of argv or the environment that were not UTF-8
            raise UsageError("the webhook key (--secret) must be UTF-8 text") from None
    return given


def _run(command: Any) -> Any:
    """Wrap a command so that user errors end in one line on stderr, never a traceback."""

    def handler(args: argparse.Namespace) -> int:
        try:
            status: int = command(args)
        except UsageError as exc:
            print(f"ascend-webhooks {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except DeliveryError as exc:
            print(f"failed: {exc}", file=sys.stderr)
            return 1
        return status

    return handler


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:  # bind() would raise OverflowError
        raise argparse.ArgumentTypeError(f"a TCP port is 0-65535, not {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value
