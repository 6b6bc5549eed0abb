"""Publishing events: wire body, fan-out, idempotency, batches, limits, listing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from ascend_webhooks.service.schemas import EventBatchResult, EventList, EventOut, EventPublished
from ascend_webhooks.store import Store
from tests.support.api import Api, api_settings, assert_problem, running_api

LIMIT = 2000


@pytest.fixture
async def api(store: Store, database_url: str) -> AsyncIterator[Api]:
    settings = api_settings(database_url, max_payload_bytes=LIMIT)
    async with running_api(settings, store=store) as running:
        yield running


async def test_publish_fans_out_to_matching_enabled_endpoints(api: Api, store: Store) -> None:
    org = await api.organization()
    everything = await api.endpoint(org)
    paid_only = await api.endpoint(org, event_types=["invoice.paid"])
    await api.endpoint(org, event_types=["payout.paid"])
    await api.endpoint(org, enabled=False)

    response = await api.publish(org, type="invoice.paid", data={"invoice": {"id": "inv_1"}})
    assert response.status_code == 202
    event = EventPublished.model_validate(response.json())
    assert event.created is True
    assert event.id.startswith("evt_")
    assert event.type == "invoice.paid"
    assert event.data == {"invoice": {"id": "inv_1"}}
    assert event.ordering_key is None
    assert sorted(d.endpoint_id for d in event.deliveries) == sorted([everything, paid_only])
    assert {d.status for d in event.deliveries} == {"pending"}

    stored = await store.get_event(org, event.id)
    expected = {"id": event.id, "type": "invoice.paid", "data": {"invoice": {"id": "inv_1"}}}
    assert stored.body == orjson.dumps(expected)  # compact UTF-8, exactly id/type/data
    got = await api.call("GET", f"/v1/organizations/{org}/events/{event.id}", expect=200)
    assert EventOut.model_validate(got.json()) == EventOut.model_validate(
        {k: v for k, v in response.json().items() if k != "created"}
    )


async def test_wire_body_keeps_unicode_and_publisher_id(api: Api, store: Store) -> None:
    org = await api.organization()
    data = {"name": "Zoë 🚀", "n": 1.5, "big": 2**63 - 1, "list": [None, True]}
    response = await api.publish(org, id="inv_42:paid", type="invoice.paid", data=data)
    assert response.status_code == 202
    body = (await store.get_event(org, "inv_42:paid")).body
    assert body == orjson.dumps({"id": "inv_42:paid", "type": "invoice.paid", "data": data})
    assert "Zoë 🚀".encode() in body


async def test_same_id_same_content_is_200_without_new_deliveries(api: Api) -> None:
    org = await api.organization()
    await api.endpoint(org)
    first = await api.publish(org, id="e1", data={"a": 1, "b": {"c": 2}}, ordering_key="k")
    assert first.status_code == 202
    # Same content, keys in another order: the canonical form is the same.
    again = await api.call(
        "POST",
        f"/v1/organizations/{org}/events",
        content=b'{"ordering_key":"k","data":{"b":{"c":2},"a":1},"id":"e1","type":"invoice.paid"}',
        headers={"Content-Type": "application/json"},
    )
    assert again.status_code == 200
    assert again.json()["created"] is False
    assert again.json()["deliveries"] == first.json()["deliveries"]
    assert again.json()["created_at"] == first.json()["created_at"]
    deliveries = await api.call("GET", f"/v1/organizations/{org}/deliveries", expect=200)
    assert len(deliveries.json()["data"]) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"data": {"a": 2}},
        {"type": "invoice.voided"},
        {"ordering_key": "other"},
        {"ordering_key": None},
    ],
)
async def test_same_id_different_content_is_409(api: Api, change: dict[str, Any]) -> None:
    org = await api.organization()
    event = {"id": "e1", "type": "invoice.paid", "data": {"a": 1}, "ordering_key": "k"}
    assert (await api.publish(org, **event)).status_code == 202
    problem = assert_problem(await api.publish(org, **(event | change)), 409)
    assert "e1" in problem["detail"]
    got = await api.call("GET", f"/v1/organizations/{org}/events/e1", expect=200)
    assert got.json()["data"] == {"a": 1}


async def test_batch_publishes_all_at_once(api: Api) -> None:
    org = await api.organization()
    endpoint = await api.endpoint(org)
    assert (await api.publish(org, id="old", data={})).status_code == 202
    events = [
        {"id": "b1", "type": "payout.paid", "data": {"n": 1}},
        {"type": "payout.failed", "data": {"n": 2}, "ordering_key": "payout_1"},
        {"id": "old", "type": "invoice.paid", "data": {}},  # already stored, same content
        {"id": "b1", "type": "payout.paid", "data": {"n": 1}},  # repeated within the batch
    ]
    response = await api.call(
        "POST", f"/v1/organizations/{org}/events/batch", json={"events": events}, expect=202
    )
    result = EventBatchResult.model_validate(response.json())
    assert [e.created for e in result.data] == [True, True, False, False]
    assert result.data[0].id == "b1"
    assert result.data[1].id.startswith("evt_")
    assert result.data[1].ordering_key == "payout_1"
    assert result.data[3].deliveries == result.data[0].deliveries
    assert [d.endpoint_id for d in result.data[0].deliveries] == [endpoint]
    listed = await api.call("GET", f"/v1/organizations/{org}/events", expect=200)
    assert len(listed.json()["data"]) == 3
    again = await api.call(
        "POST", f"/v1/organizations/{org}/events/batch", json={"events": events[:1]}, expect=200
    )
    assert again.json()["data"][0]["created"] is False


@pytest.mark.parametrize(
    "events",
    [
        # conflicts with the stored event "old"
        [{"id": "new", "type": "a", "data": {}}, {"id": "old", "type": "a", "data": {"x": 1}}],
        # conflicts within the batch
        [{"id": "d", "type": "a", "data": {}}, {"id": "d", "type": "a", "data": {"x": 1}}],
    ],
)
async def test_conflicting_batch_is_409_and_stores_nothing(
    api: Api, events: list[dict[str, Any]]
) -> None:
    org = await api.organization()
    await api.endpoint(org)
    assert (await api.publish(org, id="old", type="a", data={})).status_code == 202
    response = await api.call(
        "POST", f"/v1/organizations/{org}/events/batch", json={"events": events}
    )
    assert_problem(response, 409)
    listed = await api.call("GET", f"/v1/organizations/{org}/events", expect=200)
    assert [e["id"] for e in listed.json()["data"]] == ["old"]
    deliveries = await api.call("GET", f"/v1/organizations/{org}/deliveries", expect=200)
    assert len(deliveries.json()["data"]) == 1


async def test_invalid_batch_is_rejected_whole(api: Api) -> None:
    org = await api.organization()
    path = f"/v1/organizations/{org}/events/batch"
    good = {"type": "a", "data": {}}
    assert_problem(await api.call("POST", path, json={"events": []}), 422)
    assert_problem(await api.call("POST", path, json={"events": [good] * 1001}), 422)
    problem = assert_problem(
        await api.call("POST", path, json={"events": [good, {"type": "a", "data": []}]}), 422
    )
    assert any("1" in e["loc"] for e in problem["errors"])
    too_big = {"type": "a", "data": {"s": "x" * LIMIT}}
    assert_problem(await api.call("POST", path, json={"events": [good, too_big]}), 413)
    listed = await api.call("GET", f"/v1/organizations/{org}/events", expect=200)
    assert listed.json()["data"] == []
    ok = await api.call("POST", path, json={"events": [good] * 1000}, expect=202)
    assert len(ok.json()["data"]) == 1000


@pytest.mark.parametrize(
    "raw",
    [
        b'{"data": {}}',
        b'{"type": "a"}',
        b'{"type": "a", "data": []}',
        b'{"type": "a", "data": "x"}',
        b'{"type": "", "data": {}}',
        b'{"type": "has space", "data": {}}',
        b'{"type": 7, "data": {}}',
        b'{"type": "a", "data": {}, "id": ""}',
        b'{"type": "a", "data": {}, "id": "a/b"}',
        b'{"type": "a", "data": {}, "ordering_key": ""}',
        b'{"type": "a", "data": {}, "extra": 1}',
        b'{"type": "a", "data": {"x": NaN}}',
        b'{"type": "a", "data": {"x": [Infinity]}}',
        b'{"type": "a", "data": {"x": 123456789012345678901234567890}}',
        b'{"type": "a", "data": {"x": "\\ud800"}}',
        b'{"type": "a", "data": {}',
        b"not json",
        b"[]",
        b"null",
        b"",
        b'{"type": "a", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
async def test_bad_events_are_4xx_problems_and_store_nothing(api: Api, raw: bytes) -> None:
    org = await api.organization()
    await api.endpoint(org)
    response = await api.call(
        "POST",
        f"/v1/organizations/{org}/events",
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code in (400, 422), response.text
    assert_problem(response, response.status_code)
    listed = await api.call("GET", f"/v1/organizations/{org}/events", expect=200)
    assert listed.json()["data"] == []


async def test_payload_limit(api: Api) -> None:
    org = await api.organization()
    path = f"/v1/organizations/{org}/events"
    envelope = len(orjson.dumps({"id": "e", "type": "a", "data": {"s": ""}}))
    fits = {"id": "e", "type": "a", "data": {"s": "x" * (LIMIT - envelope)}}
    assert (await api.call("POST", path, json=fits)).status_code == 202
    over = {"id": "f", "type": "a", "data": {"s": "x" * (LIMIT - envelope + 1)}}
    problem = assert_problem(await api.call("POST", path, json=over), 413)
    assert str(LIMIT) in problem["detail"]
    # A huge declared body is refused before it is read, and a streamed one while it is read.
    huge = b'{"type": "a", "data": {"s": "' + b"x" * 100_000 + b'"}}'
    assert_problem(
        await api.call("POST", path, content=huge, headers={"Content-Type": "application/json"}),
        413,
    )

    async def chunks() -> AsyncIterator[bytes]:
        for piece in (huge[:50_000], huge[50_000:]):
            yield piece

    streamed = await api.call(
        "POST", path, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_problem(streamed, 413)
    listed = await api.call("GET", f"/v1/organizations/{org}/events", expect=200)
    assert [e["id"] for e in listed.json()["data"]] == ["e"]


async def test_list_events_newest_first_by_type_and_pages(api: Api) -> None:
    org = await api.organization()
    for n in range(5):
        kind = "invoice.paid" if n % 2 == 0 else "payout.paid"
        assert (await api.publish(org, id=f"e{n}", type=kind, data={"n": n})).status_code == 202
    path = f"/v1/organizations/{org}/events"
    everything = EventList.model_validate((await api.call("GET", path, expect=200)).json())
    assert [e.id for e in everything.data] == ["e4", "e3", "e2", "e1", "e0"]
    paid = await api.call("GET", path, params={"type": "invoice.paid"}, expect=200)
    assert [e["id"] for e in paid.json()["data"]] == ["e4", "e2", "e0"]
    page = await api.call("GET", path, params={"limit": 2}, expect=200)
    assert [e["id"] for e in page.json()["data"]] == ["e4", "e3"]
    cursor = page.json()["next_cursor"]
    rest = await api.call("GET", path, params={"limit": 10, "after": cursor}, expect=200)
    assert [e["id"] for e in rest.json()["data"]] == ["e2", "e1", "e0"]
    assert rest.json()["next_cursor"] is None
    for params in ({"limit": 0}, {"limit": 1000}, {"limit": "x"}):
        assert_problem(await api.call("GET", path, params=params), 422)
    assert_problem(await api.call("GET", path, params={"after": "garbage"}), 400)
    assert_problem(await api.call("GET", f"{path}/nope"), 404)


async def test_the_ids_dot_and_dot_dot_are_fetched_encoded_once_or_twice(api: Api) -> None:
    # Valid ids, and path segments a browser resolves away even written %2E: the dashboard
    # names them encoded twice, which the route decodes (ids never hold a "%").
    org = await api.organization()
    for event_id in (".", "..", "..."):
        assert (await api.publish(org, id=event_id, data={"id": event_id})).status_code == 202
    path = f"/v1/organizations/{org}/events"
    for segment, event_id in [
        ("%2E", "."),
        ("%252E", "."),
        ("%252e", "."),
        ("%2E%2E", ".."),
        ("%252E%252E", ".."),
        ("...", "..."),
        ("%252E%252E%252E", "..."),
    ]:
        got = await api.call("GET", f"{path}/{segment}", expect=200)
        assert EventOut.model_validate(got.json()).id == event_id
        assert got.json()["data"] == {"id": event_id}
    for unknown in ("%252F", "%25zz", "%2525"):
        assert_problem(await api.call("GET", f"{path}/{unknown}"), 404)
