"""The signature scheme, rule by rule (SPEC sections 1 and 2)."""

from __future__ import annotations

import contextlib
import hmac
import json
import re
from collections.abc import Callable, Iterator
from hashlib import sha256
from typing import Any
from wsgiref.headers import Headers as WsgirefHeaders

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ascend_webhooks import (
    Event,
    InvalidPayloadError,
    SignatureVerificationError,
    Webhook,
    WebhookError,
    sign,
    verify,
)
from ascend_webhooks import signature as signature_module

SECRET = "MY_SECRET"
TS = 1657323346
BODY = b'{"id":"evt_1","type":"invoice.paid","data":{}}'
VECTOR = "749066ab39d84bf0ee240c94ce12197758ce5fc5d4ec84d04f8cb295c0800c65"
SIG = "X-Ascend-Signature"
TSH = "X-Ascend-Request-Timestamp"


def hmac_hex(secret: str, ts: str, body: bytes) -> str:
    """The scheme written out independently of the code under test."""
    return hmac.new(secret.encode("utf-8"), ts.encode() + b":" + body, sha256).hexdigest()


def headers_for(ts: str, *v1: str, timestamp_header: str | None = None) -> dict[str, str]:
    value = ",".join([f"t={ts}", *(f"v1={v}" for v in v1)])
    headers = {SIG: value}
    if timestamp_header is not None:
        headers[TSH] = timestamp_header
    return headers


def check(body: bytes | str, headers: Any, **kwargs: Any) -> Event:
    kwargs.setdefault("now", TS)
    return verify(body, headers, SECRET, **kwargs)


# -- the test vector and sign() ------------------------------------------------------------


def test_vector_from_the_contract() -> None:
    assert hmac_hex(SECRET, str(TS), BODY) == VECTOR
    assert sign(BODY, SECRET, TS) == {TSH: str(TS), SIG: f"t={TS},v1={VECTOR}"}
    event = verify(BODY, {SIG: f"t={TS},v1={VECTOR}", TSH: str(TS)}, SECRET, now=TS)
    assert (event.id, event.type, event.data, event.raw) == ("evt_1", "invoice.paid", {}, BODY)


def test_sign_is_exactly_one_t_and_one_v1_and_the_timestamp_header_equals_t() -> None:
    headers = sign(b"{}", "whsec_abc")
    assert set(headers) == {SIG, TSH}
    match = re.fullmatch(r"t=([0-9]+),v1=([0-9a-f]{64})", headers[SIG])
    assert match is not None
    assert match[1] == headers[TSH]
    assert match[2] == hmac_hex("whsec_abc", match[1], b"{}")


def test_sign_uses_the_current_time_in_whole_seconds() -> None:
    import time

    before = int(time.time())
    stamp = int(sign(BODY, SECRET)[TSH])
    assert before <= stamp <= int(time.time())


def test_sign_with_several_secrets_gives_one_v1_each_and_each_verifies() -> None:
    headers = sign(BODY, ["old", "new"], TS)
    assert headers[SIG] == f"t={TS},v1={hmac_hex('old', str(TS), BODY)},v1=" + hmac_hex(
        "new", str(TS), BODY
    )
    assert verify(BODY, headers, "new", now=TS).id == "evt_1"
    assert verify(BODY, headers, "old", now=TS).id == "evt_1"


@pytest.mark.parametrize("timestamp", [-1, 1.5, "1657323346", True])
def test_sign_rejects_a_timestamp_that_is_not_whole_non_negative_seconds(timestamp: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        sign(BODY, SECRET, timestamp)


def test_secret_is_used_as_is_no_prefix_stripped_no_base64() -> None:
    secret = "whsec_bXlzZWNyZXQ="
    headers = sign(BODY, secret, TS)
    assert headers[SIG].endswith(hmac_hex(secret, str(TS), BODY))
    with pytest.raises(SignatureVerificationError):
        verify(BODY, headers, "bXlzZWNyZXQ=", now=TS)


# -- payload -------------------------------------------------------------------------------


@pytest.mark.parametrize("convert", [bytes, bytearray, memoryview, lambda b: b.decode("utf-8")])
def test_payload_bytes_bytearray_memoryview_or_utf8_str(convert: Callable[[bytes], Any]) -> None:
    body = '{"id":"evt_é","type":"refund.paid","data":{"note":"日本 🎉"}}'.encode()
    event = check(convert(body), sign(body, SECRET, TS))
    assert event.id == "evt_é"
    assert event.data == {"note": "日本 🎉"}
    assert event.raw == body


def test_str_payload_is_encoded_as_utf8_not_latin1() -> None:
    text = '{"id":"é","type":"t","data":{}}'
    with pytest.raises(SignatureVerificationError):
        check(text, sign(text.encode("latin-1"), SECRET, TS))


def test_str_payload_that_cannot_be_utf8_is_a_verification_error() -> None:
    with pytest.raises(SignatureVerificationError):
        check('{"id":"\ud800"}', sign(BODY, SECRET, TS))
    with pytest.raises(ValueError, match="UTF-8"):
        sign('{"id":"\ud800"}', SECRET, TS)


def test_payload_of_another_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="raw body"):
        check(json.loads(BODY), sign(BODY, SECRET, TS))


# -- headers -------------------------------------------------------------------------------


class CaseInsensitiveHeaders:
    """Headers like Starlette's or Werkzeug's: not a Mapping, but a case-insensitive get."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = {k.lower(): v for k, v in items.items()}

    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key.lower(), default)


def _case_variants(headers: dict[str, str]) -> Iterator[dict[str, str]]:
    yield headers
    yield {k.lower(): v for k, v in headers.items()}
    yield {k.upper(): v for k, v in headers.items()}
    yield {k.swapcase(): v for k, v in headers.items()}


@pytest.mark.parametrize("variant", range(4))
def test_headers_dict_of_any_case(variant: int) -> None:
    headers = list(_case_variants(sign(BODY, SECRET, TS)))[variant]
    assert check(BODY, headers).id == "evt_1"


def test_header_names_are_matched_case_insensitively_for_the_timestamp_header_too() -> None:
    headers = {"x-ascend-signature": f"t={TS},v1={VECTOR}", "X-ASCEND-REQUEST-TIMESTAMP": "1"}
    with pytest.raises(SignatureVerificationError, match="does not equal t"):
        check(BODY, headers)


def test_headers_objects_with_a_case_insensitive_get() -> None:
    signed = sign(BODY, SECRET, TS)
    wsgiref = WsgirefHeaders([(k.lower(), v) for k, v in signed.items()])
    assert check(BODY, wsgiref).id == "evt_1"
    assert check(BODY, CaseInsensitiveHeaders(signed)).id == "evt_1"


def test_real_framework_headers_objects() -> None:
    starlette = pytest.importorskip("starlette.datastructures")
    werkzeug = pytest.importorskip("werkzeug.datastructures")
    django_request = pytest.importorskip("django.http.request")
    signed = sign(BODY, SECRET, TS)
    raw = [(k.lower().encode(), v.encode()) for k, v in signed.items()]
    assert check(BODY, starlette.Headers(raw=raw)).id == "evt_1"
    assert check(BODY, werkzeug.Headers(list(signed.items()))).id == "evt_1"
    meta = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in signed.items()}
    assert check(BODY, django_request.HttpHeaders(meta)).id == "evt_1"


def test_header_values_as_bytes_or_one_item_lists() -> None:
    signed = sign(BODY, SECRET, TS)
    assert check(BODY, {k: v.encode() for k, v in signed.items()}).id == "evt_1"
    assert check(BODY, {k: [v] for k, v in signed.items()}).id == "evt_1"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {TSH: str(TS)},
        {SIG: None},
        {SIG: 12},
        {SIG: ["a", "b"]},
        None,
        42,
        [(SIG, "t=1,v1=00")],
    ],
)
def test_missing_or_unreadable_signature_header(headers: Any) -> None:
    with pytest.raises(SignatureVerificationError):
        check(BODY, headers)


def test_a_headers_object_that_raises_is_a_verification_error() -> None:
    class Broken:
        def get(self, key: str) -> str:
            raise KeyError(key)

    with pytest.raises(SignatureVerificationError, match="cannot read"):
        check(BODY, Broken())


# -- secrets -------------------------------------------------------------------------------


def test_secret_list_any_may_match_key_rotation() -> None:
    headers = sign(BODY, SECRET, TS)
    for secrets in (["other", SECRET], [SECRET, "other"], (SECRET,), ["a", "b", SECRET]):
        assert verify(BODY, headers, secrets, now=TS).id == "evt_1"
        assert Webhook(secrets).verify(BODY, headers, now=TS).id == "evt_1"
    with pytest.raises(SignatureVerificationError):
        verify(BODY, headers, ["other", "another"], now=TS)


def test_non_ascii_secret() -> None:
    secret = "clé-日本-🔑"
    headers = sign(BODY, secret, TS)
    assert headers[SIG].endswith(hmac_hex(secret, str(TS), BODY))
    assert verify(BODY, headers, secret, now=TS).id == "evt_1"


@pytest.mark.parametrize("secret", ["", [], (), [""], ["ok", ""], iter([])])
def test_empty_secret_is_a_value_error(secret: Any) -> None:
    headers = sign(BODY, SECRET, TS)
    with pytest.raises(ValueError, match="secret") as info:
        verify(BODY, headers, secret, now=TS)
    assert not isinstance(info.value, WebhookError)
    with pytest.raises(ValueError, match="secret"):
        Webhook(secret)
    with pytest.raises(ValueError, match="secret"):
        sign(BODY, secret)


@pytest.mark.parametrize("secret", [None, b"bytes", 42, [b"bytes"], ["ok", None]])
def test_secret_of_the_wrong_type_is_a_type_error(secret: Any) -> None:
    with pytest.raises(TypeError, match="secret"):
        verify(BODY, sign(BODY, SECRET, TS), secret, now=TS)


def test_secret_that_is_not_utf8_encodable_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        Webhook("\udc80")


# -- tolerance -----------------------------------------------------------------------------


def test_tolerance_defaults_to_300_seconds_both_ways() -> None:
    headers = sign(BODY, SECRET, TS)
    assert check(BODY, headers, now=TS + 300).id == "evt_1"
    assert check(BODY, headers, now=TS - 300).id == "evt_1"
    with pytest.raises(SignatureVerificationError, match="in the past"):
        check(BODY, headers, now=TS + 301)
    with pytest.raises(SignatureVerificationError, match="in the future"):
        check(BODY, headers, now=TS - 301)
    hook = Webhook(SECRET)
    assert hook.verify(BODY, headers, now=TS + 300).id == "evt_1"
    with pytest.raises(SignatureVerificationError):
        hook.verify(BODY, headers, now=TS + 301)


@pytest.mark.parametrize("tolerance", [1, 5, 60, 3600, 2.5])
def test_window_is_symmetric_and_inclusive(tolerance: float) -> None:
    headers = sign(BODY, SECRET, TS)
    hook = Webhook(SECRET, tolerance=tolerance)
    for offset in (-tolerance, 0, tolerance):
        assert check(BODY, headers, tolerance=tolerance, now=TS + offset).id == "evt_1"
        assert hook.verify(BODY, headers, now=TS + offset).id == "evt_1"
    for offset in (-tolerance - 1, tolerance + 1, tolerance + 0.5):
        with pytest.raises(SignatureVerificationError, match="tolerance"):
            check(BODY, headers, tolerance=tolerance, now=TS + offset)
        with pytest.raises(SignatureVerificationError, match="tolerance"):
            hook.verify(BODY, headers, now=TS + offset)


def test_default_clock_is_the_current_time() -> None:
    assert verify(BODY, sign(BODY, SECRET), SECRET).id == "evt_1"
    with pytest.raises(SignatureVerificationError, match="in the past"):
        verify(BODY, sign(BODY, SECRET, TS), SECRET)


def test_tolerance_none_disables_freshness() -> None:
    headers = sign(BODY, SECRET, 0)
    assert verify(BODY, headers, SECRET, tolerance=None).id == "evt_1"
    assert Webhook(SECRET, tolerance=None).verify(BODY, headers).id == "evt_1"
    huge = "9" * 5000  # far beyond int()'s digit limit: never converted when freshness is off
    headers = headers_for(huge, hmac_hex(SECRET, huge, BODY))
    assert verify(BODY, headers, SECRET, tolerance=None).id == "evt_1"
    with pytest.raises(SignatureVerificationError, match="plausible"):
        verify(BODY, headers, SECRET)


@pytest.mark.parametrize("zeros", [30, 5000])
def test_zeros_ahead_of_a_fresh_timestamp_change_nothing(zeros: int) -> None:
    # SPEC: t is decimal digits, and fresh when |now - t| <= tolerance: zeros ahead of it
    # leave its value, however many (the signature covers t as sent). 5,000 is past the
    # 4,300 digits int() converts from a string.
    padded = "0" * zeros + str(TS)
    headers = headers_for(padded, hmac_hex(SECRET, padded, BODY))
    assert verify(BODY, headers, SECRET, now=TS).id == "evt_1"


@pytest.mark.parametrize("tolerance", [0, -1, -0.5, 0.0, float("nan")])
def test_zero_negative_or_nan_tolerance_is_a_value_error(tolerance: float) -> None:
    headers = sign(BODY, SECRET, TS)
    with pytest.raises(ValueError, match="tolerance") as info:
        verify(BODY, headers, SECRET, tolerance=tolerance, now=TS)
    assert not isinstance(info.value, WebhookError)
    with pytest.raises(ValueError, match="tolerance"):
        Webhook(SECRET, tolerance=tolerance)


@pytest.mark.parametrize("tolerance", ["300", True, [300]])
def test_tolerance_of_the_wrong_type_is_a_type_error(tolerance: Any) -> None:
    with pytest.raises(TypeError, match="tolerance"):
        verify(BODY, sign(BODY, SECRET, TS), SECRET, tolerance=tolerance)


@pytest.mark.parametrize("now", [float("nan"), float("inf"), "1657323346", True])
def test_now_must_be_a_finite_number(now: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="now"):
        verify(BODY, sign(BODY, SECRET, TS), SECRET, now=now)


# -- header parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "t={ts},v1={v1}",
        " t={ts} , v1={v1} ",
        "\tt={ts},\tv1={v1}\t",
        "v1={v1},t={ts}",
        "t={ts},v0=abc,v1={v1},scheme=x",
        "t={ts},,v1={v1},",
        "t={ts},garbage,v1={v1}",
        "t={ts},v2={v1}x,v1={v1}",
    ],
)
def test_parsing_accepts_whitespace_order_and_unknown_keys(template: str) -> None:
    value = template.format(ts=TS, v1=VECTOR)
    assert check(BODY, {SIG: value}).id == "evt_1"


@pytest.mark.parametrize("position", [0, 1, 2])
def test_several_v1_any_one_matching_suffices(position: int) -> None:
    wrong = ["0" * 64, hmac_hex("other", str(TS), BODY)]
    wrong.insert(position, VECTOR)
    assert check(BODY, headers_for(str(TS), *wrong)).id == "evt_1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (f"v1={VECTOR}", "no t="),
        (f"t={TS},t={TS},v1={VECTOR}", "more than one t"),
        (f"t={TS},v1={VECTOR},t={TS}", "more than one t"),
        (f"t={TS},t=1,v1={VECTOR}", "more than one t"),
        (f"T={TS},v1={VECTOR}", "no t="),
        (f"t ={TS},v1={VECTOR}", "no t="),
        (f"t={TS}", "no v1"),
        (f"t={TS},V1={VECTOR}", "no v1"),
        ("", "no t="),
        (",,,", "no t="),
    ],
)
def test_parsing_requires_exactly_one_t_and_a_v1(value: str, reason: str) -> None:
    with pytest.raises(SignatureVerificationError, match=reason):
        check(BODY, {SIG: value})


@pytest.mark.parametrize(
    "ts",
    [
        "",
        "+1657323346",
        "-1657323346",
        " 1657323346",
        "1657323346 x",
        "1657323346.0",
        "1_657_323_346",
        "0x62c8",
        "\u0661\u0662\u0663",  # Arabic-Indic digits: str.isdigit() and int() take them
        "\uff11\uff12\uff13",  # fullwidth digits, likewise
        "\u00b2",  # superscript two: isdigit() but not a decimal
        "1657323346\n",
        "1657323346\x00",
        "1657323346\xa0",
        "12.3",
        "1e9",
    ],
)
def test_t_must_be_ascii_decimal_digits(ts: str) -> None:
    # Even a correct HMAC over the odd timestamp string is refused: the rule is on t itself.
    headers = {SIG: f"t={ts},v1={hmac_hex(SECRET, ts, BODY)}"}
    with pytest.raises(SignatureVerificationError, match="decimal digits"):
        verify(BODY, headers, SECRET, tolerance=None)


def test_timestamp_header_present_must_equal_t_exactly() -> None:
    v1 = hmac_hex(SECRET, "0123", BODY)
    assert verify(BODY, headers_for("0123", v1, timestamp_header="0123"), SECRET, tolerance=None)
    for other in ("123", "0124", " 0123", "0123 ", "", "+123", "t=0123"):
        headers = headers_for("0123", v1, timestamp_header=other)
        with pytest.raises(SignatureVerificationError, match="does not equal t"):
            verify(BODY, headers, SECRET, tolerance=None)


def test_timestamp_header_absent_then_t_is_used() -> None:
    assert check(BODY, {SIG: f"t={TS},v1={VECTOR}"}).id == "evt_1"
    # "0123" and "123" are the same number but different signed strings.
    v1 = hmac_hex(SECRET, "0123", BODY)
    assert verify(BODY, {SIG: f"t=0123,v1={v1}"}, SECRET, now=123).id == "evt_1"
    with pytest.raises(SignatureVerificationError, match="no v1 signature matches"):
        verify(BODY, {SIG: f"t=123,v1={v1}"}, SECRET, now=123)


@pytest.mark.parametrize(
    "v1",
    [
        VECTOR.upper(),
        VECTOR[:32].upper() + VECTOR[32:],
        VECTOR[:-1],
        VECTOR + "0",
        " " + VECTOR[1:],
        VECTOR[:-1] + "é",
        VECTOR[:-1] + "\x00",
        bytes.fromhex(VECTOR).decode("latin-1"),
    ],
)
def test_v1_that_is_not_64_lowercase_hex_never_matches(v1: str) -> None:
    with pytest.raises(SignatureVerificationError, match="no v1 signature matches"):
        check(BODY, {SIG: f"t={TS},v1={v1}"})
    # ...not even beside another wrong one, and a right one still wins.
    with pytest.raises(SignatureVerificationError, match="no v1 signature matches"):
        check(BODY, {SIG: f"t={TS},v1={v1},v1={'0' * 64}"})
    assert check(BODY, {SIG: f"t={TS},v1={v1},v1={VECTOR}"}).id == "evt_1"


# -- order of the checks -------------------------------------------------------------------


def test_bad_signature_and_stale_reports_the_signature() -> None:
    with pytest.raises(SignatureVerificationError, match="no v1 signature matches"):
        check(BODY, headers_for(str(TS), "0" * 64), now=TS + 10_000)


def test_valid_signature_but_stale_reports_staleness() -> None:
    with pytest.raises(SignatureVerificationError, match="outside the tolerance"):
        check(BODY, sign(BODY, SECRET, TS), now=TS + 10_000)


def test_bad_signature_and_bad_json_reports_the_signature() -> None:
    with pytest.raises(SignatureVerificationError, match="no v1 signature matches"):
        check(b"not json", headers_for(str(TS), "0" * 64))


def test_stale_and_bad_json_reports_staleness() -> None:
    with pytest.raises(SignatureVerificationError, match="outside the tolerance"):
        check(b"not json", sign(b"not json", SECRET, TS), now=TS + 10_000)


def test_valid_fresh_bad_json_is_an_invalid_payload() -> None:
    with pytest.raises(InvalidPayloadError, match="not valid JSON") as info:
        check(b"not json", sign(b"not json", SECRET, TS))
    assert isinstance(info.value, WebhookError)
    assert not isinstance(info.value, SignatureVerificationError)


# -- the signed body -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'"evt"', "JSON object"),
        (b"null", "JSON object"),
        (b"42", "JSON object"),
        (b'{"type":"t","data":{}}', '"id"'),
        (b'{"id":1,"type":"t","data":{}}', '"id"'),
        (b'{"id":null,"type":"t","data":{}}', '"id"'),
        (b'{"id":"e","data":{}}', '"type"'),
        (b'{"id":"e","type":["t"],"data":{}}', '"type"'),
        (b'{"id":"e","type":"t"}', '"data"'),
        (b'{"id":"e","type":"t","data":[]}', '"data"'),
        (b'{"id":"e","type":"t","data":"{}"}', '"data"'),
        (b'{"id":"e","type":"t","data":null}', '"data"'),
        (b'{"id":"e","type":"t","data":{"x":NaN}}', "NaN"),
        (b'{"id":"e","type":"t","data":{"x":Infinity}}', "Infinity"),
        (b'{"id":"e","type":"t","data":{"x":-Infinity}}', "Infinity"),
        (b'{"id":"e","type":"t","data":{}} x', "not valid JSON"),
        (b'{"id":"e","type":"t","data":{}', "not valid JSON"),
        (b'{"id":"e","type":"t","data":{"x":' + b"9" * 5000 + b"}}", "not valid JSON"),
        (b'{"id":"e","type":"t","data":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "JSON"),
        (b'{"id":"\xff","type":"t","data":{}}', "UTF-8"),
        (b'{"id":"\xed\xa0\x80","type":"t","data":{}}', "UTF-8"),  # an encoded surrogate
        (b'\xef\xbb\xbf{"id":"e","type":"t","data":{}}', "JSON"),  # a UTF-8 BOM
        ('{"id":"e","type":"t","data":{}}'.encode("utf-16"), "UTF-8"),
    ],
)
def test_signed_body_that_is_not_an_event(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidPayloadError, match=re.escape(reason)):
        check(body, sign(body, SECRET, TS))


def test_extra_top_level_keys_are_tolerated_and_data_is_kept_whole() -> None:
    body = b'{"id":"e","type":"t","data":{"a":[1,2.5,null,true]},"created":1}'
    event = check(body, sign(body, SECRET, TS))
    assert event == Event("e", "t", {"a": [1, 2.5, None, True]})


# -- constant-time comparison --------------------------------------------------------------


def test_every_candidate_is_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    good = hmac_hex("k2", str(TS), BODY)
    headers = headers_for(str(TS), good, "0" * 64, "NOT-HEX")
    assert verify(BODY, headers, ["k1", "k2"], now=TS).id == "evt_1"
    # No early exit: both keys against all three values, the match included.
    assert len(calls) == 6
    expected = {hmac_hex("k1", str(TS), BODY), good}
    assert {a for a, _ in calls} == expected
    assert (good, good) in calls


@pytest.mark.parametrize("outcome", [True, False])
def test_the_decision_is_compare_digest_s(monkeypatch: pytest.MonkeyPatch, outcome: bool) -> None:
    # If verify compared with == anywhere, forcing compare_digest would not change its answer.
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: outcome)
    good = sign(BODY, SECRET, TS)
    bad = headers_for(str(TS), "0" * 64)
    for headers in (good, bad):
        if outcome:
            assert check(BODY, headers).id == "evt_1"
        else:
            with pytest.raises(SignatureVerificationError):
                check(BODY, headers)


# -- properties ----------------------------------------------------------------------------

secrets = st.text(min_size=1, max_size=40).filter(
    lambda s: s == s.encode("utf-8", "replace").decode()
)
timestamps = st.integers(min_value=0, max_value=10**12)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(body=st.binary(max_size=512), secret=secrets, ts=timestamps)
def test_round_trip_for_any_body_secret_and_timestamp(body: bytes, secret: str, ts: int) -> None:
    headers = sign(body, secret, ts)
    assert headers[TSH] == str(ts)
    assert headers[SIG] == f"t={ts},v1={hmac_hex(secret, str(ts), body)}"
    try:
        event = verify(body, headers, secret, now=ts)
    except InvalidPayloadError:
        return  # authentic, just not an event: the signature check itself passed
    assert event.raw == body


@PROPERTY
@given(
    data=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=5),
    event_id=st.text(max_size=20),
    secret=secrets,
    ts=timestamps,
)
def test_round_trip_of_events(data: dict[str, Any], event_id: str, secret: str, ts: int) -> None:
    body = json.dumps({"id": event_id, "type": "invoice.paid", "data": data}).encode()
    event = Webhook(secret).verify(body, sign(body, secret, ts), now=ts)
    assert (event.id, event.type, event.data) == (event_id, "invoice.paid", data)


@PROPERTY
@given(body=st.binary(min_size=1, max_size=256), index=st.integers(0), delta=st.integers(1, 255))
def test_any_single_byte_change_of_the_body_is_rejected(
    body: bytes, index: int, delta: int
) -> None:
    headers = sign(body, SECRET, TS)
    changed = bytearray(body)
    changed[index % len(body)] = (changed[index % len(body)] + delta) % 256
    with pytest.raises(SignatureVerificationError, match="no v1 signature matches"):
        verify(bytes(changed), headers, SECRET, now=TS)


@PROPERTY
@given(index=st.integers(0, 63), replacement=st.sampled_from("0123456789abcdefABCDEF g"))
def test_any_change_of_the_signature_hex_is_rejected(index: int, replacement: str) -> None:
    assume(VECTOR[index] != replacement)
    v1 = VECTOR[:index] + replacement + VECTOR[index + 1 :]
    with pytest.raises(SignatureVerificationError, match="no v1 signature matches"):
        check(BODY, headers_for(str(TS), v1, timestamp_header=str(TS)))


@PROPERTY
@given(ts=timestamps, other=timestamps)
def test_any_change_of_the_timestamp_is_rejected(ts: int, other: int) -> None:
    assume(ts != other)
    v1 = sign(BODY, SECRET, ts)[SIG].split("v1=")[1]
    # The two headers agree with each other, the HMAC does not: rejected as a bad signature.
    headers = headers_for(str(other), v1, timestamp_header=str(other))
    with pytest.raises(SignatureVerificationError, match="no v1 signature matches"):
        verify(BODY, headers, SECRET, tolerance=None)
    with pytest.raises(SignatureVerificationError, match="does not equal t"):
        verify(BODY, {**sign(BODY, SECRET, ts), TSH: str(other)}, SECRET, tolerance=None)


header_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=120) | st.from_regex(
    r"\A\s*(t=[0-9\uff10-\uff19\u0660-\u0669 +.-]{0,14}|v1=[0-9a-fA-F]{0,66}|x=\S*|)"
    r"(\s*,\s*(t=[0-9]{0,12}|v1=[0-9a-f]{64}|\S*)){0,4}\s*\Z"
)
header_value = (
    header_text
    | st.binary(max_size=80)
    | st.none()
    | st.integers()
    | st.lists(header_text, max_size=2)
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=200) | st.text(max_size=100),
    signature=header_value,
    timestamp=header_value,
    names=st.sampled_from([(SIG, TSH), (SIG.lower(), TSH.upper()), ("X-Other", TSH)]),
    tolerance=st.none() | st.integers(1, 10**6),
)
@example(
    body=b"{}", signature="t=1,v1=" + "a" * 64, timestamp="1", names=(SIG, TSH), tolerance=None
)
def test_header_garbage_only_ever_raises_webhook_errors(
    body: bytes | str, signature: Any, timestamp: Any, names: tuple[str, str], tolerance: int | None
) -> None:
    headers = {names[0]: signature, names[1]: timestamp}
    for call in (
        lambda: verify(body, headers, SECRET, tolerance=tolerance, now=TS),
        lambda: verify(body, CaseInsensitiveHeaders(headers), SECRET, tolerance=tolerance),
        lambda: Webhook([SECRET, "k2"], tolerance=tolerance).verify(body, headers),
    ):
        with contextlib.suppress(WebhookError):  # anything else fails the test
            call()


@PROPERTY
@given(body=st.binary(max_size=300))
def test_signed_garbage_bodies_only_ever_raise_invalid_payload(body: bytes) -> None:
    try:
        event = check(body, sign(body, SECRET, TS))
    except InvalidPayloadError:
        return
    assert isinstance(event.id, str)
    assert isinstance(event.type, str)
    assert isinstance(event.data, dict)


def test_module_is_standard_library_only() -> None:
    import ast
    import sys
    from pathlib import Path

    tree = ast.parse(Path(signature_module.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
