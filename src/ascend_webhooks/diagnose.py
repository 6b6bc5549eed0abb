"""Explain why a captured request passes or fails verification (``ascend-webhooks verify``).

:func:`verify` answers with the first failure only, as a receiver should. Someone debugging an
integration needs more: every problem at once, what the signature should have been, and the
usual culprits (a trailing newline added by the capture, a re-serialized body, a secret pasted
with a space, uppercase hex). The verdict itself always comes from :func:`verify`, so that this
module can never call valid what a receiver would refuse, or the other way round; the rest is
commentary computed beside it. Standard library only.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256

from .errors import InvalidPayloadError, SignatureVerificationError
from .event import Event
from .signature import (
    _MAX_TIMESTAMP_DIGITS,
    DEFAULT_TOLERANCE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HeadersLike,
    parse_event,
    verify,
)

__all__ = ["Diagnosis", "diagnose"]

_HEX = frozenset("0123456789abcdef")
_PREFIX = 12  # hex digits shown of an expected signature: enough to compare by eye


@dataclass
class Diagnosis:
    """The verdict of :func:`verify` on a request, with the reasons spelled out."""

    event: Event | None = None
    #: The exception :func:`verify` raised, if any (the authoritative verdict).
    error: SignatureVerificationError | InvalidPayloadError | None = None
    #: What is wrong, in the order verify() checks it: header, signature, freshness, payload.
    problems: list[str] = field(default_factory=list)
    #: Likely causes of a mismatch, found by trying the usual mistakes.
    hints: list[str] = field(default_factory=list)
    #: What was found, whether right or wrong (timestamps, signatures present and expected).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the request verifies."""
        return self.error is None


def diagnose(
    payload: bytes,
    headers: Mapping[str, str] | HeadersLike,
    secrets: str | Sequence[str],
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> Diagnosis:
    """Verify ``payload`` and ``headers`` like :func:`verify` and explain the outcome."""
    result = Diagnosis()
    current = int(time.time()) if now is None else now
    keys = [secrets] if isinstance(secrets, str) else list(secrets)  # one secret, as verify()
    try:
        result.event = verify(payload, headers, keys, tolerance=tolerance, now=current)
    except (SignatureVerificationError, InvalidPayloadError) as exc:
        result.error = exc
    _Explainer(payload, headers, keys, tolerance, current, result).run()
    if result.error is not None and not result.problems:
        result.problems.append(str(result.error))  # never leave a failure unexplained
    return result


class _Explainer:
    def __init__(
        self,
        body: bytes,
        headers: Mapping[str, str] | HeadersLike,
        secrets: list[str],
        tolerance: float | None,
        now: float,
        result: Diagnosis,
    ) -> None:
        self.body = body
        self.headers = headers
        self.secrets = secrets
        self.tolerance = tolerance
        self.now = now
        self.result = result
        self.problem = result.problems.append
        self.hint = result.hints.append
        self.note = result.notes.append

    def run(self) -> None:
        signature = _get(self.headers, SIGNATURE_HEADER)
        ts_header = _get(self.headers, TIMESTAMP_HEADER)
        if signature is None:
            self.problem(f"the {SIGNATURE_HEADER} header is missing")
            return
        self.note(f"{SIGNATURE_HEADER}: {signature}")
        ts_values, v1_values = self._items(signature)
        ts = self._timestamp(ts_values, ts_header)
        if not v1_values:
            self.problem(f"{SIGNATURE_HEADER} has no v1=<signature> item")
        if ts is None:
            self._malformed(v1_values)
            return
        matched = self._signatures(ts, v1_values, ts_header)
        if matched:
            self._freshness(ts)
            self._payload()

    def _malformed(self, v1_values: list[str]) -> None:
        # SPEC: a malformed v1 "simply never matches", so it is a problem only when none does.
        for value in v1_values:
            if len(value) != 64 or not set(value.lower()) <= _HEX:
                self.problem(
                    f"v1={_shorten(value)} is malformed: a v1 must be 64 lowercase hex digits "
                    f"(this one has {len(value)} characters)"
                )
            elif value != value.lower():
                self.problem(f"v1={_shorten(value)} is uppercase: a v1 must be lowercase hex")

    def _items(self, signature: str) -> tuple[list[str], list[str]]:
        ts_values: list[str] = []
        v1_values: list[str] = []
        for item in signature.split(","):
            text = item.strip(" \t")
            key, sep, value = text.partition("=")
            if key == "t" and sep:
                ts_values.append(value)
            elif key == "v1" and sep:
                v1_values.append(value)
            elif text:
                self.note(f"ignored item {text!r} (only t and v1 are read)")
        return ts_values, v1_values

    def _timestamp(self, ts_values: list[str], ts_header: str | None) -> str | None:
        if not ts_values:
            self.problem(f"{SIGNATURE_HEADER} has no t=<timestamp> item")
            return None
        if len(ts_values) > 1:
            self.problem(f"{SIGNATURE_HEADER} has {len(ts_values)} t items; exactly one is allowed")
            return None
        ts = ts_values[0]
        if not ts:
            self.problem("t is empty; it must be the Unix time in decimal digits")
            return None
        bad = [c for c in ts if c not in "0123456789"]
        if bad:
            self.problem(
                f"t={ts!r} is malformed: it must be decimal digits only (0-9), "
                f"found {''.join(dict.fromkeys(bad))!r}"
            )
            return None
        if ts_header is None:
            self.note(f"{TIMESTAMP_HEADER} is absent; t={ts} is used")
        elif ts_header != ts:
            self.problem(
                f"timestamp mismatch: {TIMESTAMP_HEADER} is {ts_header!r} but t is {ts!r} "
                "(they must be the same string)"
            )
        else:
            self.note(f"{TIMESTAMP_HEADER} equals t ({ts})")
        return ts

    def _signatures(self, ts: str, v1_values: list[str], ts_header: str | None) -> bool:
        expected = [_hmac(secret, ts, self.body) for secret in self.secrets]
        matched = False
        for value in v1_values:
            raw = value.encode("utf-8", "surrogateescape")
            if any(hmac.compare_digest(raw, e.encode()) for e in expected):
                matched = True
                self.note(f"v1={_shorten(value)} matches")
            else:
                self.note(f"v1={_shorten(value)} does not match")
        for number, value in enumerate(expected, start=1):
            label = f"secret {number}" if len(expected) > 1 else "the secret"
            self.note(f"expected with {label}: v1={value[:_PREFIX]}...")
        if not matched:
            self._malformed(v1_values)
        if not matched and v1_values:
            self.problem(
                "no v1 matches: the HMAC-SHA256 of "
                f'"{ts}:" + body ({len(self.body)} bytes) under '
                + ("any of the secrets given" if len(expected) > 1 else "the secret given")
                + " is different"
            )
            self._mismatch_hints(ts, v1_values, ts_header)
        return matched

    def _mismatch_hints(self, ts: str, v1_values: list[str], ts_header: str | None) -> None:
        wanted = {value.lower() for value in v1_values}

        def matches(secret: str, stamp: str, body: bytes) -> bool:
            expected = _hmac(secret, stamp, body)
            return any(_same(expected, value) for value in wanted)

        for secret in self.secrets:
            expected = _hmac(secret, ts, self.body)
            if any(_same(expected, v.lower()) for v in v1_values if v != v.lower()):
                self.hint("the signature matches once lowercased: the sender must send lowercase")
            if secret != secret.strip() and matches(secret.strip(), ts, self.body):
                self.hint("the signature matches the secret without its surrounding whitespace")
            for variant, what in _body_variants(self.body):
                if matches(secret, ts, variant):
                    self.hint(f"the signature matches {what}")
            if ts_header is not None and ts_header != ts and matches(secret, ts_header, self.body):
                self.hint(f"the signature was computed over {TIMESTAMP_HEADER}, not t")

    def _freshness(self, ts: str) -> None:
        # The same steps as verify(): zeros ahead of t change no value, and without a
        # tolerance t's value is never judged, however implausible.
        digits = ts.lstrip("0")
        plausible = len(digits) <= _MAX_TIMESTAMP_DIGITS
        if plausible:
            stamp = int(digits) if digits else 0
            when = datetime.fromtimestamp(stamp, UTC).isoformat() if stamp < 253402300800 else "?"
            age = self.now - stamp
            direction = "in the past" if age >= 0 else "in the future"
            self.note(f"t={ts} is {when}, {abs(age):.0f} s {direction} (now is {self.now:.0f})")
        if self.tolerance is None:
            self.note("the freshness check is off (--no-tolerance)")
        elif not plausible:
            self.problem(f"t={ts[:24]}... is not a plausible Unix time")
        elif abs(age) > self.tolerance:
            kind = "stale" if age > 0 else "from the future"
            self.problem(
                f"{kind} by {abs(age) - self.tolerance:.0f} s: t is {abs(age):.0f} s "
                f"{'old' if age > 0 else 'ahead'}, the tolerance is {self.tolerance:g} s"
            )
            self.hint("use --now TS to check a capture at the time it was taken")

    def _payload(self) -> None:
        try:
            event = parse_event(self.body)
        except InvalidPayloadError as exc:
            self.problem(f"the body is signed correctly but is not an event: {exc}")
        else:
            self.note(f"event id={event.id!r} type={event.type!r}")


def _hmac(secret: str, ts: str, body: bytes) -> str:
    return hmac.digest(secret.encode("utf-8"), ts.encode("ascii") + b":" + body, sha256).hex()


def _same(expected: str, given: str) -> bool:
    """A signature compared in constant time (``given`` comes from the request)."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))


def _shorten(value: str) -> str:
    return value if len(value) <= _PREFIX else value[:_PREFIX] + "..."


def _body_variants(body: bytes) -> list[tuple[bytes, str]]:
    """Bodies a capture or a framework commonly makes of the one that was signed."""
    variants: list[tuple[bytes, str]] = []
    seen = {body}
    stripped = body.rstrip(b"\r\n")
    if stripped != body:
        seen.add(stripped)
        variants.append((stripped, "the body without its trailing newline (added by the capture)"))
    seen.add(body + b"\n")
    variants.append((body + b"\n", "the body with a trailing newline"))
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return variants
    for text, how in (
        (json.dumps(parsed), "json.dumps() with its default separators"),
        (json.dumps(parsed, separators=(",", ":")), "compact json.dumps()"),
        (json.dumps(parsed, ensure_ascii=False), "json.dumps(ensure_ascii=False)"),
        (json.dumps(parsed, indent=2), "json.dumps(indent=2)"),
    ):
        candidate = text.encode("utf-8")
        if candidate not in seen:
            seen.add(candidate)
            variants.append(
                (candidate, f"the body re-serialized by {how}: verify the raw body bytes")
            )
    return variants


def _get(headers: Mapping[str, str] | HeadersLike, name: str) -> str | None:
    """A header value as verify() would read it, or None when absent or unreadable."""
    try:
        value = headers.get(name)
        if value is None and isinstance(headers, Mapping):
            value = next((v for k, v in headers.items() if str(k).lower() == name.lower()), None)
    except Exception:  # verify() has already reported an unreadable headers object
        return None
    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1")
    return value if isinstance(value, str) else None
