"""NUL characters: PostgreSQL's text cannot hold them (SQLite's can). The API refuses them in
what it stores, alike on both stores, and answers a NUL in a path (404) or a query value (422)
the same on both, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ascend_webhooks.store import Store
from tests.support.api import Api, api_settings, assert_problem, running_api


@pytest.fixture
async def api(store: Store, database_url: str) -> AsyncIterator[Api]:
    async with running_api(api_settings(database_url), store=store) as running:
        yield running


async def test_text_with_a_nul_is_refused_before_it_is_stored(api: Api) -> None:
    assert_problem(await api.call("POST", "/v1/organizations", json={"name": "a\0b"}), 422)
    org = await api.organization()
    endpoints = f"/v1/organizations/{org}/endpoints"
    for body in (
        {"url": "https://example.com/hook", "description": "d\0"},
        {"url": "https://example.com/ho\0ok"},
    ):
        assert_problem(await api.call("POST", endpoints, json=body), 422)
    assert_problem(
        await api.call("POST", f"/v1/organizations/{org}/tokens", json={"name": "t\0"}), 422
    )
    events = f"/v1/organizations/{org}/events"
    keyed = {"type": "invoice.paid", "data": {}, "ordering_key": "k\0"}
    assert_problem(await api.call("POST", events, json=keyed), 422)  # org unknown: the route
    await api.publish(org, id="evt_first")  # the organization is known: the publish front next
    assert_problem(await api.call("POST", events, json=keyed), 422)
    batch = {"events": [{"type": "invoice.paid", "data": {}}, keyed]}
    assert_problem(await api.call("POST", f"{events}/batch", json=batch), 422)
    # A NUL inside the event's data is JSON like any other character: stored and sent as is.
    stored = await api.publish(org, id="evt_nul_data", data={"x": "a\0b"})
    assert stored.status_code == 202
    listed = await api.call("GET", f"{events}?limit=10", expect=200)
    assert [e["id"] for e in listed.json()["data"]] == ["evt_nul_data", "evt_first"]
    assert listed.json()["data"][0]["data"] == {"x": "a\0b"}


async def test_a_nul_in_a_path_or_query_value_is_the_same_client_error_on_both_stores(
    api: Api,
) -> None:
    org = await api.organization()
    for method, path in (
        ("GET", "/v1/organizations/org%00x"),
        ("GET", f"/v1/organizations/{org}/events/evt%00x"),
        # Event ids are decoded once more (to name "." and ".."): %2500 is a NUL there too.
        ("GET", f"/v1/organizations/{org}/events/%2500"),
        ("GET", f"/v1/organizations/{org}/events/evt%2500x"),
        ("GET", f"/v1/organizations/{org}/endpoints/ep%00x"),
        ("DELETE", f"/v1/organizations/{org}/endpoints/ep%00x"),
        ("GET", f"/v1/organizations/{org}/deliveries/dlv%00x"),
        ("POST", "/v1/organizations/org%00x/events"),  # the publish front's route
    ):
        kwargs = {"json": {"type": "invoice.paid", "data": {}}} if method == "POST" else {}
        problem = assert_problem(await api.call(method, path, **kwargs), 404)
        assert problem["detail"] == "no resource has a NUL character in its path", path
    for query in ("type=a%00b", "after=c%00", "status=pending%00"):
        events = "events" if "status" not in query else "deliveries"
        assert_problem(await api.call("GET", f"/v1/organizations/{org}/{events}?{query}"), 422)
