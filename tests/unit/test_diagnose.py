"""diagnose(): the verdict is always verify()'s, and every failure is explained."""

from __future__ import annotations

import hmac
import json
from hashlib import sha256
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ascend_webhooks import WebhookError, sign, verify
from ascend_webhooks.diagnose import diagnose
from ascend_webhooks.samples import EVENT_TYPES, sample_body, sample_data

SECRET = "whsec_diag"
TS = 1_700_000_000
BODY = b'{"id":"evt_1","type":"invoice.paid","data":{}}'


def _hmac(ts: str, body: bytes) -> str:
    return hmac.digest(SECRET.encode(), ts.encode() + b":" + body, sha256).hex()


def test_valid_request() -> None:
    result = diagnose(BODY, sign(BODY, SECRET, TS), [SECRET], now=TS)
    assert result.ok
    assert result.event is not None
    assert result.event.id == "evt_1"
    assert result.problems == []


def test_one_secret_may_be_given_as_a_string_as_to_verify() -> None:
    # A str is a Sequence[str] too: taken letter by letter, the right secret was "wrong".
    result = diagnose(BODY, sign(BODY, SECRET, TS), SECRET, now=TS)
    assert result.ok, result.problems


def test_every_problem_at_once() -> None:
    headers = {
        "X-Ascend-Signature": f"t={TS},v1={'A' * 64},v1=abc",
        "X-Ascend-Request-Timestamp": "1",
    }
    result = diagnose(BODY, headers, [SECRET], now=TS)
    assert not result.ok
    text = "\n".join(result.problems)
    assert "timestamp mismatch" in text
    assert "uppercase" in text
    assert "64 lowercase hex" in text
    assert "no v1 matches" in text


def test_a_malformed_v1_beside_one_that_matches_is_no_problem() -> None:
    # SPEC: a v1 that is not 64 lowercase hex digits simply never matches; another may.
    signed = sign(BODY, SECRET, TS)
    for extra in ("abc", "A" * 64):
        headers = {"X-Ascend-Signature": signed["X-Ascend-Signature"] + f",v1={extra}"}
        result = diagnose(BODY, headers, [SECRET], now=TS)
        assert result.ok
        assert result.problems == []


def test_freshness_is_judged_as_verify_judges_it() -> None:
    # Zeros ahead of t change no value; without a tolerance t's value is never read.
    padded = "0" * 30 + str(TS)
    headers = {"X-Ascend-Signature": f"t={padded},v1={_hmac(padded, BODY)}"}
    result = diagnose(BODY, headers, [SECRET], now=TS)
    assert result.ok
    assert result.problems == []
    huge = "9" * 40
    headers = {"X-Ascend-Signature": f"t={huge},v1={_hmac(huge, BODY)}"}
    unchecked = diagnose(BODY, headers, [SECRET], tolerance=None, now=TS)
    assert unchecked.ok
    assert unchecked.problems == []
    checked = diagnose(BODY, headers, [SECRET], now=TS)
    assert not checked.ok
    assert "not a plausible Unix time" in checked.problems[0]


def test_hints_for_the_usual_mistakes() -> None:
    signed = sign(BODY, SECRET, TS)
    newline = diagnose(BODY + b"\n", signed, [SECRET], now=TS)
    assert any("trailing newline" in hint for hint in newline.hints)
    reserialized = json.dumps(json.loads(BODY)).encode()
    assert any("re-serialized" in h for h in diagnose(reserialized, signed, [SECRET], now=TS).hints)
    spaced = diagnose(BODY, signed, [SECRET + " "], now=TS)
    assert any("whitespace" in hint for hint in spaced.hints)
    upper = {"X-Ascend-Signature": signed["X-Ascend-Signature"].upper().replace("T=", "t=")}
    upper["X-Ascend-Signature"] = upper["X-Ascend-Signature"].replace("V1=", "v1=")
    assert any("lowercased" in hint for hint in diagnose(BODY, upper, [SECRET], now=TS).hints)


def test_stale_and_future_say_by_how_much() -> None:
    signed = sign(BODY, SECRET, TS)
    assert "stale by 100 s" in diagnose(BODY, signed, [SECRET], now=TS + 400).problems[0]
    future = diagnose(BODY, signed, [SECRET], now=TS - 350, tolerance=300)
    assert "from the future by 50 s" in future.problems[0]


def test_samples_cover_every_documented_type_and_verify() -> None:
    assert len(EVENT_TYPES) == 12
    for event_type in EVENT_TYPES:
        body = sample_body("evt_s", event_type)
        event = verify(body, sign(body, SECRET, TS), SECRET, now=TS)
        assert event.type == event_type
        assert event.data == sample_data(event_type)
        assert event.data
    assert sample_data("unknown.type") == {}
    sample_data("invoice.paid")["invoice"]["status"] = "changed"  # a copy: samples stay intact
    assert sample_data("invoice.paid")["invoice"]["status"] == "paid"


mutations = st.sampled_from(
    ["none", "body", "header", "secret", "stale", "drop_ts", "bad_t", "extra_v1"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=80) | st.just(BODY),
    mutation=mutations,
    garbage=st.text(max_size=40),
    tolerance=st.none() | st.integers(1, 1000),
    offset=st.integers(-2000, 2000),
)
def test_verdict_always_agrees_with_verify(
    body: bytes, mutation: str, garbage: str, tolerance: int | None, offset: int
) -> None:
    headers: dict[str, Any] = sign(body, SECRET, TS)
    secrets = [SECRET]
    if mutation == "body":
        body += b"x"
    elif mutation == "header":
        headers["X-Ascend-Signature"] = garbage
    elif mutation == "secret":
        secrets = ["other"]
    elif mutation == "drop_ts":
        del headers["X-Ascend-Request-Timestamp"]
    elif mutation == "bad_t":
        headers["X-Ascend-Request-Timestamp"] = garbage
    elif mutation == "extra_v1":
        headers["X-Ascend-Signature"] += f",v1={garbage}"
    result = diagnose(body, headers, secrets, tolerance=tolerance, now=TS + offset)
    try:
        verify(body, headers, secrets, tolerance=tolerance, now=TS + offset)
    except WebhookError:
        assert not result.ok
        assert result.problems
    else:
        assert result.ok
        assert result.problems == []
