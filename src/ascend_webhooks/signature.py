"""The Ascend signature scheme: build and check ``X-Ascend-Signature``.

Wire format (SPEC section 1)::

    X-Ascend-Request-Timestamp: 1657323346
    X-Ascend-Signature: t=1657323346,v1=<hex HMAC-SHA256(secret, "1657323346:" + raw body)>

Standard library only: this module is what every receiver imports, so it must stay cheap to
install and fast to call (``bench/bench_verify.py`` holds it to at least 80 % of the speed of
the bare HMAC + compare + ``json.loads`` it cannot skip). Checks run in the order the contract
fixes: signature first, then freshness, then payload parsing. Every authentication failure is a
:class:`SignatureVerificationError`; a signed body that is not an event is an
:class:`InvalidPayloadError`; a caller's programming mistake (empty secret, non-positive
tolerance) is a ``ValueError`` or ``TypeError`` raised before any header is read.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from hashlib import sha256
from typing import Any, Protocol

from .errors import InvalidPayloadError, SignatureVerificationError
from .event import Event, _new_event

__all__ = [
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "HeadersLike",
    "Payload",
    "Secret",
    "Webhook",
    "compute_signature",
    "parse_event",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Ascend-Signature"
TIMESTAMP_HEADER = "X-Ascend-Request-Timestamp"
DEFAULT_TOLERANCE = 300

_SIGNATURE_LOWER = SIGNATURE_HEADER.lower()
_TIMESTAMP_LOWER = TIMESTAMP_HEADER.lower()
# HTTP's optional whitespace (RFC 9110 "OWS") is space and tab only: str.strip() would also
# eat "\n", "\x1c" or "\xa0", and "t=123\n" must not pass for "t=123".
_OWS = " \t"
# A timestamp longer than this cannot be a Unix time in seconds; it is never fresh, and
# int() on it is skipped (Python refuses to convert strings of more than 4300 digits).
_MAX_TIMESTAMP_DIGITS = 18
# The exact form of section 1; anything else goes through the general parser, which gives the
# same answer for this form (fullmatch, and [0-9] rather than \d, which is any Unicode digit).
_CANONICAL_HEADER = re.compile(r"t=([0-9]+),v1=([0-9a-f]{64})")
# Stand-in for a v1 value that can never match (not hex): compared like any other value.
_NEVER_MATCHES = "-" * 64


class HeadersLike(Protocol):
    """Anything with a ``.get(name)`` (Starlette, Werkzeug, Django, wsgiref headers, dicts)."""

    def get(self, key: str, /) -> Any: ...


Payload = bytes | bytearray | memoryview | str
Secret = str | Iterable[str]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder built once: json.loads(..., parse_constant=...) would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_raw_decode = _DECODER.raw_decode


def compute_signature(timestamp: str, payload: bytes, secret: str | bytes) -> str:
    """Return the hex HMAC-SHA256 of ``"<timestamp>:<payload>"`` under ``secret``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.digest(key, timestamp.encode("ascii") + b":" + payload, sha256).hex()


def sign(payload: Payload, secret: Secret, timestamp: int | None = None) -> dict[str, str]:
    """Return the two Ascend headers for ``payload``: one ``v1`` per secret given.

    ``timestamp`` defaults to the current Unix time in whole seconds. With one secret (the
    usual case) the signature header is exactly ``t=<timestamp>,v1=<64 hex>``.
    """
    try:
        body = _payload_bytes(payload)
    except UnicodeEncodeError as exc:
        raise ValueError("payload str is not encodable as UTF-8; pass the raw bytes") from exc
    keys = _secret_keys(secret)
    if timestamp is None:
        timestamp = int(time.time())
    elif isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise TypeError("timestamp must be an int (Unix seconds) or None")
    elif timestamp < 0:
        raise ValueError("timestamp must not be negative")
    ts = str(timestamp)
    message = ts.encode("ascii") + b":" + body
    signatures = ",".join("v1=" + hmac.digest(key, message, sha256).hex() for key in keys)
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: f"t={ts},{signatures}"}


def verify(
    payload: Payload,
    headers: Mapping[str, str] | HeadersLike,
    secret: Secret,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> Event:
    """Check the request's signature and freshness, then return its :class:`Event`.

    Raises :class:`SignatureVerificationError` if the request is not authentic or not fresh,
    :class:`InvalidPayloadError` if it is authentic but not an event.
    """
    keys = _secret_keys(secret)
    if now is not None:
        now = _now(now)
    return _verify(payload, headers, keys, _tolerance(tolerance), now)


class Webhook:
    """A verifier bound to one secret (or several, during key rotation) and one tolerance."""

    __slots__ = ("_keys", "_tolerance")

    def __init__(self, secret: Secret, tolerance: float | None = DEFAULT_TOLERANCE) -> None:
        self._keys = _secret_keys(secret)
        self._tolerance = _tolerance(tolerance)

    def verify(
        self,
        payload: Payload,
        headers: Mapping[str, str] | HeadersLike,
        *,
        now: float | None = None,
    ) -> Event:
        """Same rules as :func:`verify`, with this webhook's secrets and tolerance."""
        if now is not None:
            now = _now(now)
        return _verify(payload, headers, self._keys, self._tolerance, now)

    def sign(self, payload: Payload, timestamp: int | None = None) -> dict[str, str]:
        """Sign ``payload`` with the first of this webhook's secrets."""
        return sign(payload, self._keys[0].decode("utf-8"), timestamp)


def parse_event(body: bytes) -> Event:
    """Parse an already-authenticated body into an :class:`Event` or raise InvalidPayloadError.

    Strict: the body must be UTF-8 (no BOM, no UTF-16), must not use NaN or Infinity, and must
    be a JSON object with a string ``id``, a string ``type`` and an object ``data``.
    """
    try:
        text = body.decode("utf-8")
        try:
            obj, end = _raw_decode(text)
        except ValueError:
            end = -1
        if end != len(text):
            # Whitespace around the value, extra data, or an error: decode() applies the full
            # rules and words the error. The common case, a bare object, skips its two regexes.
            obj = _DECODER.decode(text)
    except UnicodeDecodeError as exc:
        raise InvalidPayloadError(f"body is not valid UTF-8: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, NaN, too many digits
        raise InvalidPayloadError(f"body is not valid JSON: {exc}") from exc
    if type(obj) is not dict:
        raise InvalidPayloadError("body must be a JSON object")
    event_id = obj.get("id")
    event_type = obj.get("type")
    data = obj.get("data")
    if type(event_id) is not str:
        raise InvalidPayloadError('"id" must be a string')
    if type(event_type) is not str:
        raise InvalidPayloadError('"type" must be a string')
    if type(data) is not dict:
        raise InvalidPayloadError('"data" must be a JSON object')
    return _new_event(event_id, event_type, data, body)


# -- internals -----------------------------------------------------------------------------


def _verify(
    payload: Payload,
    headers: Mapping[str, str] | HeadersLike,
    keys: tuple[bytes, ...],
    tolerance: float | None,
    now: float | None,
) -> Event:
    if type(payload) is bytes:
        body = payload
    else:
        try:
            body = _payload_bytes(payload)
        except UnicodeEncodeError as exc:
            # A str with lone surrogates was never UTF-8 on the wire, so nobody signed it.
            raise SignatureVerificationError(
                "the payload str is not encodable as UTF-8 and cannot carry a valid signature"
            ) from exc

    header = _header(headers, SIGNATURE_HEADER, _SIGNATURE_LOWER)
    if header is None:
        raise SignatureVerificationError(f"missing {SIGNATURE_HEADER} header")
    ts, candidates = _parse_signature_header(header)
    ts_header = _header(headers, TIMESTAMP_HEADER, _TIMESTAMP_LOWER)
    if ts_header is not None and ts_header != ts:
        raise SignatureVerificationError(
            f"{TIMESTAMP_HEADER} ({ts_header!r}) does not equal t in {SIGNATURE_HEADER}"
        )

    message = ts.encode("ascii") + b":" + body
    matched = False
    for key in keys:
        expected = hmac.digest(key, message, sha256).hex()
        for candidate in candidates:
            # Every pair is compared, in constant time, so timing reveals nothing.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureVerificationError("no v1 signature matches the payload and secret")

    if tolerance is not None:
        digits = ts.lstrip("0")  # zeros ahead change no value
        if len(digits) > _MAX_TIMESTAMP_DIGITS:
            raise SignatureVerificationError(f"t={ts[:24]}... is not a plausible Unix time")
        # Timestamps are whole seconds, so the default clock is read in whole seconds too.
        # int() of the digits alone: it refuses strings of more than 4,300, zeros included.
        age = (int(time.time()) if now is None else now) - (int(digits) if digits else 0)
        if abs(age) > tolerance:
            raise _stale(ts, age, tolerance)
    return parse_event(body)


def _stale(ts: str, age: float, tolerance: float) -> SignatureVerificationError:
    when = "in the past" if age > 0 else "in the future"
    return SignatureVerificationError(
        f"timestamp t={ts} is {abs(age):g} s {when}, outside the tolerance of {tolerance:g} s"
    )


def _parse_signature_header(header: str) -> tuple[str, list[str]]:
    canonical = _CANONICAL_HEADER.fullmatch(header)
    if canonical is not None:  # what every sender following section 1 sends: skip the loop
        return canonical[1], [canonical[2]]
    ts: str | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip(_OWS).partition("=")
        if not sep:
            continue
        if key == "t":
            if ts is not None:
                raise SignatureVerificationError(f"more than one t in {SIGNATURE_HEADER}")
            ts = value
        elif key == "v1":
            # The expected value is 64 lowercase hex digits, so anything else (uppercase hex
            # included) simply never compares equal. compare_digest() only takes ASCII str:
            # other values become a stand-in that cannot match either.
            candidates.append(value if value.isascii() else _NEVER_MATCHES)
    if ts is None:
        raise SignatureVerificationError(f"no t= timestamp in {SIGNATURE_HEADER}")
    if not ts or not ts.isascii() or not ts.isdigit():
        raise SignatureVerificationError("the timestamp t must be decimal digits only")
    if not candidates:
        raise SignatureVerificationError(f"no v1 signature in {SIGNATURE_HEADER}")
    return ts, candidates


def _header(headers: Mapping[str, str] | HeadersLike, name: str, lower: str) -> str | None:
    """Find a header by name, case-insensitively, in any headers object."""
    try:
        value = headers.get(name)
        if value is None:
            value = headers.get(lower)  # ASGI, HTTP/2 and many proxies lowercase names
        if value is None and isinstance(headers, Mapping):
            # A plain dict is case-sensitive: scan it (headers are few).
            for key, item in headers.items():
                if isinstance(key, str) and key.lower() == lower:
                    value = item
                    break
    except Exception as exc:  # a broken headers object must not escape as a bare error
        raise SignatureVerificationError(f"cannot read the {name} header: {exc}") from exc
    if value is None or type(value) is str:
        return value
    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        raise SignatureVerificationError(f"the {name} header is not a string")
    return value


def _payload_bytes(payload: Payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    raise TypeError(f"payload must be bytes or str (the raw body), not {type(payload).__name__}")


def _secret_keys(secret: Secret) -> tuple[bytes, ...]:
    if type(secret) is str and secret and secret.isascii():  # the common case, made cheap
        return (secret.encode("ascii"),)
    if isinstance(secret, str):
        secrets: list[object] = [secret]
    elif isinstance(secret, bytes | bytearray) or not isinstance(secret, Iterable):
        raise TypeError(f"secret must be a str or a list of str, not {type(secret).__name__}")
    else:
        secrets = list(secret)
    if not secrets:
        raise ValueError("at least one secret is required")
    keys = []
    for item in secrets:
        if not isinstance(item, str):
            raise TypeError(f"a secret must be a str, not {type(item).__name__}")
        if not item:
            raise ValueError("a secret must not be empty")
        try:
            keys.append(item.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("a secret must be encodable as UTF-8") from None
    return tuple(keys)


def _tolerance(tolerance: float | None) -> float | None:
    if tolerance is None or (type(tolerance) is int and tolerance > 0):
        return tolerance
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float):
        raise TypeError("tolerance must be a number of seconds or None")
    if math.isnan(tolerance) or tolerance <= 0:
        raise ValueError("tolerance must be a positive number of seconds, or None to disable")
    return tolerance


def _now(now: float | None) -> float | None:
    if now is None:
        return None
    if isinstance(now, bool) or not isinstance(now, int | float):
        raise TypeError("now must be a Unix time in seconds or None")
    if not math.isfinite(now):
        raise ValueError("now must be a finite Unix time")
    return now
