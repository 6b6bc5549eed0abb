"""The publish front (service/fastpath.py): it answers valid publishes exactly as the route would,
and hands everything else to the route, whose answers (401, 404, 409, 413, 422) stay the same."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from ascend_webhooks.service import fastpath
from ascend_webhooks.service.app import GC_THRESHOLD
from ascend_webhooks.service.limits import RequestLimits
from ascend_webhooks.service.problems import Problem
from ascend_webhooks.service.routes.common import json_loads_utf8
from ascend_webhooks.service.routes.events import (
    build_event,
    prefers_minimal,
    published_view,
    wire_body,
)
from ascend_webhooks.service.schemas import (
    EventBatchAccepted,
    EventBatchResult,
    EventCreate,
    EventPublished,
)
from ascend_webhooks.store import Store
from ascend_webhooks.store.base import StoreUnavailableError
from ascend_webhooks.store.models import (
    Delivery,
    DeliveryStatus,
    Event,
    NewEvent,
    PublishResult,
)
from tests.support.api import ADMIN, ADMIN_TOKEN, Api, api_settings, assert_problem, running_api

LIMIT = 2000


class Counted:
    """Counts the requests the front passes on to the framework."""

    def __init__(self, api: Api) -> None:
        front: Any = api.app._front
        self.inner = front.app
        self.calls = 0
        front.app = self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await self.inner(scope, receive, send)


@pytest.fixture
async def api(store: Store, database_url: str) -> AsyncIterator[Api]:
    settings = api_settings(database_url, max_payload_bytes=LIMIT)
    async with running_api(settings, store=store) as running:
        yield running


async def test_valid_publishes_are_answered_by_the_front_like_the_route(api: Api) -> None:
    org = await api.organization()
    counted = Counted(api)
    by_route = await api.publish(org, id="evt_a", data={"n": 1})  # organization not known yet
    assert counted.calls == 1
    endpoint = await api.endpoint(org)
    assert counted.calls == 2
    by_front = await api.publish(org, id="evt_b", data={"n": 1})
    assert counted.calls == 2  # the front answered
    assert by_route.status_code == by_front.status_code == 202
    assert by_front.headers["content-type"] == by_route.headers["content-type"]
    one, two = (EventPublished.model_validate(r.json()) for r in (by_route, by_front))
    assert one.model_dump(exclude={"id", "created_at", "deliveries"}) == two.model_dump(
        exclude={"id", "created_at", "deliveries"}
    )
    assert [d.endpoint_id for d in two.deliveries] == [endpoint]
    again = await api.publish(org, id="evt_b", data={"n": 1})  # idempotent: 200, the original
    assert again.status_code == 200
    assert again.json()["created"] is False
    assert again.json()["deliveries"] == by_front.json()["deliveries"]
    assert counted.calls == 2

    batch = await api.call(
        "POST",
        f"/v1/organizations/{org}/events/batch",
        json={"events": [{"type": "t", "data": {"i": i}, "id": f"evt_{i}"} for i in range(3)]},
    )
    assert batch.status_code == 202
    assert counted.calls == 2
    views = EventBatchResult.model_validate(batch.json()).data
    assert [(v.id, v.data, v.created) for v in views] == [
        (f"evt_{i}", {"i": i}, True) for i in range(3)
    ]


async def test_everything_else_gets_the_routes_answers(api: Api) -> None:
    org = await api.organization()
    await api.publish(org, id="evt_known")  # the organization is known from here on
    counted = Counted(api)
    path = f"/v1/organizations/{org}/events"

    conflict = await api.publish(org, id="evt_known", data={"other": True})
    assert_problem(conflict, 409)
    big_int = await api.publish(org, data={"x": 123456789012345678901234567890})
    assert_problem(big_int, 422)
    invalid = await api.call("POST", path, json={"type": "t", "data": [], "extra": 1})
    assert_problem(invalid, 422)
    too_large = await api.publish(org, data={"x": "y" * LIMIT})
    assert_problem(too_large, 413)
    not_json = await api.call("POST", path, content=b"{", headers={"content-type": "text/plain"})
    assert assert_problem(not_json, 415)["type"].endswith("#problem-unsupported-media-type")
    unparsable = b'{"type": "t", "data": {'  # a JSON body the front reads, and cannot parse
    for route in (path, f"{path}/batch"):
        garbled = await api.call(
            "POST", route, content=unparsable, headers={"content-type": "application/json"}
        )
        assert assert_problem(garbled, 400)["type"].endswith("#problem-bad-request")
    assert_problem(await api.call("POST", path, token="aw_unknown", json={}), 401)
    assert_problem(await api.publish("org_nobody"), 404)
    assert counted.calls == 9  # each went to the route

    # Nothing of those was stored.
    listed = await api.call("GET", f"{path}?limit=10", expect=200)
    assert [e["id"] for e in listed.json()["data"]] == ["evt_known"]


@pytest.mark.parametrize("batch", [False, True])
async def test_a_publish_the_database_may_have_taken_is_answered_503_not_run_again(
    api: Api, store: Store, monkeypatch: pytest.MonkeyPatch, batch: bool
) -> None:
    """A connection lost around the commit leaves the publish taken or not, unknown: the
    front handed such a call to the route, which stored the events again under new ids (those
    sent without one). It answers as the route does for an unavailable database instead."""
    org = await api.organization()
    await api.publish(org, id="evt_known")
    real = store.publish
    calls = 0

    async def lost_after_commit(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        await real(*args, **kwargs)
        raise StoreUnavailableError("the connection was lost")

    monkeypatch.setattr(store, "publish", lost_after_commit)
    event = {"type": "invoice.paid", "data": {"n": 1}}
    path = f"/v1/organizations/{org}/events" + ("/batch" if batch else "")
    body = {"events": [event]} if batch else event
    response = await api.client.post(path, json=body, headers=ADMIN)  # (call() refuses a 5xx)
    problem = assert_problem(response, 503)
    assert problem["type"].endswith("#problem-unavailable")
    assert response.headers["Retry-After"] == "1"
    assert calls == 1  # not run a second time
    monkeypatch.undo()
    listed = await api.call("GET", f"/v1/organizations/{org}/events", expect=200)
    assert len(listed.json()["data"]) == 2  # evt_known and the one taken


async def test_a_header_the_front_reads_sent_twice_gets_the_routes_answer(api: Api) -> None:
    # Starlette takes a repeated header's first value (the bearer token, the body's type): the
    # front, which read the last, answered what the route refuses.
    org = await api.organization()
    await api.publish(org, id="evt_known")  # the organization is known from here on
    counted = Counted(api)
    path = f"/v1/organizations/{org}/events"
    body = orjson.dumps({"type": "t", "data": {}})
    json_type = ("Content-Type", "application/json")
    valid, bogus = ("Authorization", f"Bearer {ADMIN_TOKEN}"), ("Authorization", "Bearer bogus")
    cases: list[tuple[list[tuple[str, str]], int]] = [
        ([json_type, bogus, valid], 401),
        ([("Content-Type", "text/plain"), json_type, valid], 415),
        ([json_type, valid, bogus], 202),  # the first is valid: the route accepts it
        ([json_type, json_type, valid], 202),
    ]
    for headers, status in cases:
        for route in (path, f"{path}/batch"):
            content = body if route == path else b'{"events": [%b]}' % body
            response = await api.client.post(route, content=content, headers=headers)
            assert response.status_code == status, (headers, response.text)
    assert counted.calls == 2 * len(cases)  # each went to the route
    listed = await api.call("GET", f"{path}?limit=10", expect=200)
    assert len(listed.json()["data"]) == 1 + 4  # the two accepted twice, on each route


async def test_an_organization_token_uses_the_front_for_its_organization_only(api: Api) -> None:
    org, other = await api.organization(), await api.organization("Other")
    token = await api.org_token(org)
    body: dict[str, Any] = {"type": "t", "data": {}}
    await api.call("POST", f"/v1/organizations/{org}/events", token=token, json=body, expect=202)
    counted = Counted(api)
    await api.call("POST", f"/v1/organizations/{org}/events", token=token, json=body, expect=202)
    assert counted.calls == 0
    elsewhere = await api.call(
        "POST", f"/v1/organizations/{other}/events", token=token, content=orjson.dumps(body),
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert_problem(elsewhere, 404)
    assert counted.calls == 1


async def test_a_batch_through_the_front_stores_the_routes_bodies(api: Api, store: Store) -> None:
    org = await api.organization()
    await api.endpoint(org)
    await api.publish(org, id="evt_known")  # the organization is known from here on
    counted = Counted(api)
    events: list[dict[str, Any]] = [
        {"type": "invoice.paid", "data": {"name": "Zoë 🚀", "n": 1.5, "big": 2**64 - 1}},
        {"type": "a", "data": {"digits": "12345678901234567890"}, "ordering_key": "k"},
        {"id": "e:1", "type": "a", "data": {"nested": [{"x": None}, True]}},
        {"id": "evt_known", "type": "invoice.paid", "data": {}},  # stored already, same content
        {"id": "e:1", "type": "a", "data": {"nested": [{"x": None}, True]}},  # a repeat
    ]
    path = f"/v1/organizations/{org}/events/batch"
    response = await api.call("POST", path, json={"events": events}, expect=202)
    assert counted.calls == 0
    views = EventBatchResult.model_validate(response.json()).data
    assert [v.created for v in views] == [True, True, True, False, False]
    assert [v.data for v in views] == [e["data"] for e in events]
    assert [v.ordering_key for v in views] == [None, "k", None, None, None]
    assert views[0].id.startswith("evt_")
    assert views[1].id.startswith("evt_")
    assert views[0].id != views[1].id
    assert views[4].deliveries == views[2].deliveries
    for view, sent in zip(views, events, strict=True):
        stored = await store.get_event(org, view.id)
        assert stored.body == orjson.dumps(
            {"id": view.id, "type": sent["type"], "data": sent["data"]}
        )


async def test_a_batch_the_front_refuses_gets_the_routes_problem_naming_the_event(
    api: Api,
) -> None:
    org = await api.organization()
    await api.publish(org, id="old", type="a", data={})  # the organization is known from here on
    counted = Counted(api)
    path = f"/v1/organizations/{org}/events/batch"
    good = {"type": "a", "data": {}}
    bad_events = [
        ({"type": "a", "data": {"x": 2**70}}, 422),
        ({"type": "a", "data": {"x": [1, {"y": -(2**64)}]}}, 422),
        ({"type": "has space", "data": {}}, 422),
        ({"type": "a", "data": {}, "extra": 1}, 422),
        ({"type": "a", "data": {}, "id": "a/b"}, 422),
        ({"type": "a", "data": {"s": "x" * LIMIT}}, 413),
    ]
    for bad, status in bad_events:
        response = await api.call("POST", path, json={"events": [good, good, bad]})
        problem = assert_problem(response, status)
        named = [str(part) for error in problem.get("errors") or [] for part in error["loc"]]
        assert "2" in named or "events.2" in problem["detail"], problem
    conflict = await api.call(
        "POST",
        path,
        json={"events": [good | {"id": "d"}, {"id": "d", "type": "a", "data": {"x": 1}}]},
    )
    assert "'d'" in assert_problem(conflict, 409)["detail"]
    stored_conflict = await api.call(
        "POST", path, json={"events": [{"id": "old", "type": "b", "data": {}}]}
    )
    assert "old" in assert_problem(stored_conflict, 409)["detail"]
    assert counted.calls == len(bad_events) + 2  # each was answered by the route
    listed = await api.call("GET", f"/v1/organizations/{org}/events", expect=200)
    assert [e["id"] for e in listed.json()["data"]] == ["old"]


def _escaped(value: Any) -> str:
    """``value`` (strings and objects) as JSON with every character of every string, keys
    included, an escape: six bytes for each ASCII character, twelve (a surrogate pair) for
    each beyond the BMP."""
    if isinstance(value, dict):
        members = (f"{_escaped(key)}:{_escaped(item)}" for key, item in value.items())
        return "{" + ",".join(members) + "}"
    units = value.encode("utf-16-be")
    return (
        '"' + "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2)) + '"'
    )


async def test_an_event_that_fits_is_accepted_however_its_text_is_escaped(
    store: Store, database_url: str
) -> None:
    # The limit is the stored body's; the request's was that plus 16 KiB, so an event that fits
    # was 413 when its client escaped its text (as json.dumps does by default), 202 in UTF-8.
    limit = 20_000  # large enough for six times it to exceed it by more than 16 KiB
    settings = api_settings(database_url, max_payload_bytes=limit)
    async with running_api(settings, store=store) as api:
        org = await api.organization()
        await api.publish(org, id="evt_known")  # known: admin publishes go through the front
        unseen = [await api.org_token(org) for _ in range(6)]  # each, once, through the route
        counted = Counted(api)
        path = f"/v1/organizations/{org}/events"
        room = limit - len(orjson.dumps({"id": "e:x:r", "type": "t", "data": {"s": ""}}))
        texts = {"a": "x" * room, "l": "é" * (room // 2), "e": "🚀" * (room // 4)}  # ASCII, ...
        for (name, text), by in itertools.product(texts.items(), ("r", "f")):  # route, front
            event = {"id": f"e:{name}:{by}", "type": "t", "data": {"s": text}}
            stored = orjson.dumps(event)
            assert limit - 3 <= len(stored) <= limit
            raw = _escaped(event)
            assert orjson.loads(raw) == event
            assert len(raw) > limit + 16 * 1024
            token = unseen.pop() if by == "r" else ADMIN_TOKEN
            calls = counted.calls
            response = await api.call(
                "POST", path, token=token, content=raw.encode(),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            assert response.status_code == 202, (name, by, response.text[:200])
            assert counted.calls == calls + (by == "r")
            assert (await store.get_event(org, event["id"])).body == stored
        # The stored body's limit stays exact, however the request writes it.
        over = {"id": "e:over", "type": "t", "data": {"s": "x" * (room + 1)}}
        escaped = orjson.dumps(over).replace(b"x", b"\\u0078")
        for content in (orjson.dumps(over), escaped):
            response = await api.call(
                "POST", path, content=content, headers={"Content-Type": "application/json"}
            )
            assert_problem(response, 413)


def test_a_batch_may_be_as_large_as_a_single_events_request() -> None:
    # Up to 1,000 events, within 32 MiB; but one event that fits is never refused in a batch.
    default = RequestLimits(262_144)
    assert default.event == 6 * 262_144 + 16 * 1024
    assert default.batch == 32 * 1024 * 1024
    large = RequestLimits(10 * 1024 * 1024)
    assert large.batch == large.event == 6 * 10 * 1024 * 1024 + 16 * 1024


# -- the front's own parsing, building and rendering, against the route's ----------------------


def _route_event(raw: bytes) -> NewEvent | None:
    """What the route makes of a single-event body: its UTF-8 ``json.loads``, the model, then
    ``build_event``; None where it answers a problem instead."""
    try:
        item = EventCreate.model_validate(json_loads_utf8(raw))
        return build_event(item, LIMIT)
    except (ValueError, Problem, HTTPException):  # (ValidationError, JSONDecodeError: ValueErrors)
        return None


def _front_event(raw: bytes, *, batch: bool = False) -> list[NewEvent] | None:
    services = SimpleNamespace(settings=SimpleNamespace(max_payload_bytes=LIMIT))
    return fastpath._events(services, fastpath._parsed(raw, batch=batch))  # type: ignore[arg-type]


ACCEPTED = [
    b'{"type": "a", "data": {}}',
    b'{"type": "a", "data": {}, "id": null, "ordering_key": null}',
    b'{"ordering_key": "k\\u00e9", "data": {"b": {"c": 2}, "a": [1, 2.5, -0.0, null, true]},'
    b' "id": "e1", "type": "invoice.paid"}',
    b'{"type": "~!", "data": {"s": "Zo\xc3\xab \xf0\x9f\x9a\x80 \\ud83d\\ude80 \\"q\\" \\\\"},'
    b' "id": "a.b:c~d-e_f"}',
    b'{"type": "a", "data": {"long digits in a string": "12345678901234567890123"}}',
    b'{"type": "a", "data": {"max": 18446744073709551615, "min": -9223372036854775808}}',
    b'{"type": "a", "data": {"x": 1, "x": 2, "y": 1e-400, "z": 1E2, "big": 1e19}}',
    b'{"type": "a", "data": {"k": "' + b"x" * 100 + b'"}, "ordering_key": "' + b"k" * 255 + b'"}',
    b' {"type": "a", "data": {}}\n',
]
REFUSED = [  # the front hands these to the route (which answers some of them 202 itself)
    b'{"type": "a", "data": {"x": 123456789012345678901234567890}}',
    b'{"type": "a", "data": {"x": [{"y": -9223372036854775809}]}}',
    # A float written with 19 digits or more, as large as a 64-bit overflow: the route says.
    b'{"type": "a", "data": {"x": 10000000000000000000.5}}',
    b'{"type": "a", "data": {"x": NaN}}',
    b'{"type": "a", "data": {"x": 1e400}}',
    b'{"type": "a", "data": {"x": "\\ud800"}}',
    b'\xef\xbb\xbf{"type": "a", "data": {}}',
    '{"type": "a", "data": {}}'.encode("utf-16"),
    '{"type": "a", "data": {}}'.encode("utf-32-le"),
    b'{"type": "a\\n", "data": {}}',
    b'{"type": "a", "data": {}, "id": "e1\\n"}',
    b'{"type": "a", "data": {}, "id": "a/b"}',
    b'{"type": "a", "data": {}, "id": 7}',
    b'{"type": "a", "data": {}, "ordering_key": ""}',
    b'{"type": "a", "data": {}, "ordering_key": "' + b"k" * 256 + b'"}',
    b'{"type": "' + b"t" * 201 + b'", "data": {}}',
    b'{"type": "a", "data": {}, "extra": 1}',
    b'{"type": "a", "data": []}',
    b'{"data": {}}',
    b'{"type": "a", "data": {"s": "' + b"x" * LIMIT + b'"}}',
    b'{"type": "a", "data": ' + b"[" * 300 + b"]" * 300 + b"}",
    b"[]",
    b"",
]


@pytest.mark.parametrize("raw", ACCEPTED)
def test_the_front_builds_the_routes_stored_body_and_hash(raw: bytes) -> None:
    route, front = _route_event(raw), _front_event(raw)
    assert route is not None
    assert front is not None
    (event,) = front
    if json.loads(raw).get("id") is None:
        assert event.id.startswith("evt_")
        assert len(event.id) == len(route.id)
        route = dataclasses.replace(
            route, id=event.id, body=route.body.replace(route.id.encode(), event.id.encode())
        )
    assert event == route  # byte-identical body, same content hash, id, type, ordering key


def test_the_front_sets_every_field_of_the_events_it_builds() -> None:
    # The front fills NewEvent's slots itself, one setter per field: a field added to the
    # model must be added there too.
    assert [field.name for field in dataclasses.fields(NewEvent)] == [
        "id",
        "type",
        "body",
        "content_hash",
        "ordering_key",
    ]
    (event,) = _front_event(b'{"type": "a", "data": {}, "id": "e", "ordering_key": "k"}') or []
    assert event == NewEvent("e", "a", event.body, event.content_hash, "k")
    assert repr(event).startswith("NewEvent(id='e', type='a', body=b'")


@pytest.mark.parametrize("raw", REFUSED)
def test_the_front_hands_over_what_it_does_not_accept_as_the_route_would(raw: bytes) -> None:
    assert _front_event(raw) is None
    assert (
        _front_event(b'{"events": [{"type": "a", "data": {}}, ' + raw + b"]}", batch=True) is None
    )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"events": []}',
        b'{"events": {}}',
        b'{"events": [{"type": "a", "data": {}}], "more": 1}',
        b'{"events": [' + b",".join([b'{"type": "a", "data": {}}'] * 1001) + b"]}",
        b'{"events": [{"type": "a", "data": {}}, 1]}',
        b'{"other": [{"type": "a", "data": {}}]}',
    ],
)
def test_the_front_hands_over_a_batch_the_model_refuses(raw: bytes) -> None:
    assert _front_event(raw, batch=True) is None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.dictionaries(st.text(max_size=5), json_values, max_size=5),
    event_type=st.sampled_from(["a", "invoice.paid", "x y", "", "é"]),
    key=st.none() | st.text(max_size=3),
)
def test_whatever_the_front_accepts_the_route_stores_the_same(
    data: dict[str, Any], event_type: str, key: str | None
) -> None:
    raw = json.dumps(
        {"type": event_type, "data": data, "id": "e1", "ordering_key": key}, ensure_ascii=False
    ).encode("utf-8", "surrogatepass")
    front = _front_event(raw)
    if front is not None:
        assert front == [_route_event(raw)]


def _result(data: Any, key: str | None, created_at: datetime, deliveries: int) -> PublishResult:
    body, _ = wire_body("evt_1", "invoice.paid", data, key)
    event = Event(
        id="evt_1",
        organization_id="org_1",
        type="invoice.paid",
        body=body,
        ordering_key=key,
        created_at=created_at,
        deliveries=tuple(
            Delivery(
                id=f"dlv_{n}",
                organization_id="org_1",
                event_id="evt_1",
                endpoint_id=f"ep_{n}",
                status=DeliveryStatus.PENDING,
                attempt_count=0,
                next_attempt_at=created_at,
                created_at=created_at,
                updated_at=created_at,
            )
            for n in range(deliveries)
        ),
    )
    return PublishResult(event=event, created=True)


@settings(max_examples=200, deadline=None)
@given(
    data=st.dictionaries(
        st.text(max_size=5),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=4), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=5,
    ),
    key=st.none() | st.text(min_size=1, max_size=5),
    created_at=st.datetimes(timezones=st.just(UTC)),
    deliveries=st.integers(0, 3),
)
def test_the_fronts_answer_is_the_routes_byte_for_byte(
    data: dict[str, Any], key: str | None, created_at: datetime, deliveries: int
) -> None:
    result = _result(data, key, created_at, deliveries)
    expected = orjson.dumps(published_view(result, data), option=orjson.OPT_UTC_Z)
    answers = fastpath._Answers()
    assert answers.view(result, True, fresh=True) == expected
    assert answers.view(result, True, fresh=True) == expected  # from the parts kept
    repeat = published_view(result) | {"created": False}
    assert answers.view(result, False, fresh=False) == orjson.dumps(repeat, option=orjson.OPT_UTC_Z)
    # A delivery whose status changed since its endpoint's parts were kept.
    moved = dataclasses.replace(
        result.event,
        deliveries=tuple(
            dataclasses.replace(d, status=DeliveryStatus.SUCCEEDED) for d in result.event.deliveries
        ),
    )
    moved_result = PublishResult(event=moved, created=True)
    assert answers.view(moved_result, True, fresh=True) == orjson.dumps(
        published_view(moved_result, data), option=orjson.OPT_UTC_Z
    )


async def test_the_collector_is_tuned_while_the_app_runs_and_put_back_after(
    store: Store, database_url: str
) -> None:
    before = gc.get_threshold()
    settings = api_settings(database_url, max_payload_bytes=LIMIT)
    async with running_api(settings, store=store):
        assert gc.get_threshold()[0] >= GC_THRESHOLD
        assert gc.get_freeze_count() > 0
        async with running_api(settings, store=store):  # a second app in the same process
            assert gc.get_threshold()[0] >= GC_THRESHOLD
        assert gc.get_threshold()[0] >= GC_THRESHOLD  # still tuned: the first app runs
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_return_minimal_is_answered_alike_by_the_front_and_the_route(
    api: Api, store: Store
) -> None:
    org = await api.organization()
    endpoint = await api.endpoint(org)
    await api.publish(org, id="evt_old", type="a")  # stored before the batches
    token = await api.org_token(org)  # a token the front has not seen: its first call, the route
    counted = Counted(api)
    path = f"/v1/organizations/{org}/events/batch"
    prefer = {"Prefer": "return=minimal"}

    def events(tag: str) -> dict[str, Any]:
        return {
            "events": [
                {"id": f"{tag}:1", "type": "a", "data": {"n": 1}},
                {"type": "a", "data": {"n": 2}},
                {"id": f"{tag}:1", "type": "a", "data": {"n": 1}},  # a repeat within the batch
                {"id": "evt_old", "type": "a", "data": {}},  # stored already, same content
            ]
        }

    answers = {}
    for tag in ("route", "front"):
        response = await api.call(
            "POST", path, token=token, json=events(tag), headers=prefer, expect=202
        )
        assert response.headers["preference-applied"] == "return=minimal"
        assert response.headers["content-type"] == "application/json"
        answers[tag] = [(a.id, a.created) for a in EventBatchAccepted.model_validate(
            response.json()).data]  # fmt: skip
        assert counted.calls == 1  # the first went to the route, the second did not
    for tag, answer in answers.items():
        generated = answer[1][0]
        assert generated.startswith("evt_")
        assert answer == [(f"{tag}:1", True), (generated, True), (f"{tag}:1", False),
                          ("evt_old", False)]  # fmt: skip
        stored = await store.get_event(org, f"{tag}:1")  # stored as any publish stores it
        assert [d.endpoint_id for d in stored.deliveries] == [endpoint]
        assert stored.body == b'{"id":"%s:1","type":"a","data":{"n":1}}' % tag.encode()

    # One event: the same two keys; the full answer without the preference.
    single = f"/v1/organizations/{org}/events"
    one = await api.call(
        "POST", single, json={"id": "one", "type": "a", "data": {}}, headers=prefer, expect=202
    )
    assert one.json() == {"id": "one", "created": True}
    assert one.headers["preference-applied"] == "return=minimal"
    again = await api.call(
        "POST", single, json={"id": "one", "type": "a", "data": {}},
        headers={"Prefer": "handling=lenient, return=minimal"}, expect=200,
    )  # fmt: skip
    assert again.json() == {"id": "one", "created": False}
    full = await api.call(
        "POST", single, json={"id": "one", "type": "a", "data": {}},
        headers={"Prefer": "return=representation"}, expect=200,
    )  # fmt: skip
    assert "preference-applied" not in full.headers
    assert EventPublished.model_validate(full.json()).deliveries[0].endpoint_id == endpoint
    fresh = await api.org_token(org)  # a single publish through the route, too
    routed = counted.calls
    by_route = await api.call(
        "POST", single, token=fresh, json={"id": "two", "type": "a", "data": {}}, headers=prefer,
        expect=202,
    )  # fmt: skip
    assert by_route.json() == {"id": "two", "created": True}
    assert by_route.headers["preference-applied"] == "return=minimal"
    assert counted.calls == routed + 1


@pytest.mark.parametrize(
    ("values", "minimal"),
    [
        (["return=minimal"], True),
        (['RETURN="minimal"'], True),
        (["respond-async, wait=10", "return=minimal; x=1"], True),
        (["return=representation"], False),
        (["return=minimalist", "minimal"], False),
        ([], False),
    ],
)
def test_the_prefer_header_is_read_as_rfc_7240_writes_it(values: list[str], minimal: bool) -> None:
    assert prefers_minimal(values) is minimal
