"""An organization's token sees its own organization only: everything else is 404."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ascend_webhooks.store import Store
from tests.support.api import Api, api_settings, assert_problem, running_api


@pytest.fixture
async def api(store: Store, database_url: str) -> AsyncIterator[Api]:
    async with running_api(api_settings(database_url), store=store) as running:
        yield running


async def test_token_of_a_cannot_see_or_touch_b(api: Api) -> None:
    a, b = await api.organization("A"), await api.organization("B")
    token_a = await api.org_token(a)
    b_endpoint = await api.endpoint(b)
    b_key = (await api.call("POST", f"/v1/organizations/{b}/keys", expect=201)).json()["id"]
    b_event = (await api.publish(b, id="secret-event")).json()
    b_delivery = b_event["deliveries"][0]["id"]

    hidden = [
        ("GET", f"/v1/organizations/{b}", None),
        ("POST", f"/v1/organizations/{b}/tokens", None),
        ("GET", f"/v1/organizations/{b}/keys", None),
        ("POST", f"/v1/organizations/{b}/keys", None),
        ("POST", f"/v1/organizations/{b}/keys/{b_key}/activate", None),
        ("DELETE", f"/v1/organizations/{b}/keys/{b_key}", None),
        ("GET", f"/v1/organizations/{b}/endpoints", None),
        ("POST", f"/v1/organizations/{b}/endpoints", {"url": "http://127.0.0.1:9/x"}),
        ("GET", f"/v1/organizations/{b}/endpoints/{b_endpoint}", None),
        ("PATCH", f"/v1/organizations/{b}/endpoints/{b_endpoint}", {"enabled": False}),
        ("DELETE", f"/v1/organizations/{b}/endpoints/{b_endpoint}", None),
        ("GET", f"/v1/organizations/{b}/events", None),
        ("POST", f"/v1/organizations/{b}/events", {"type": "a", "data": {}}),
        ("POST", f"/v1/organizations/{b}/events/batch", {"events": [{"type": "a", "data": {}}]}),
        ("GET", f"/v1/organizations/{b}/events/secret-event", None),
        ("GET", f"/v1/organizations/{b}/deliveries", None),
        ("GET", f"/v1/organizations/{b}/deliveries/{b_delivery}", None),
        ("POST", f"/v1/organizations/{b}/deliveries/{b_delivery}/retry", None),
        # B's records addressed through A's own path are just as invisible.
        ("GET", f"/v1/organizations/{a}/endpoints/{b_endpoint}", None),
        ("PATCH", f"/v1/organizations/{a}/endpoints/{b_endpoint}", {"enabled": False}),
        ("DELETE", f"/v1/organizations/{a}/endpoints/{b_endpoint}", None),
        ("GET", f"/v1/organizations/{a}/events/secret-event", None),
        ("GET", f"/v1/organizations/{a}/deliveries/{b_delivery}", None),
        ("POST", f"/v1/organizations/{a}/deliveries/{b_delivery}/retry", None),
        ("POST", f"/v1/organizations/{a}/keys/{b_key}/activate", None),
        ("DELETE", f"/v1/organizations/{a}/keys/{b_key}", None),
    ]
    for method, path, body in hidden:
        response = await api.call(method, path, token=token_a, json=body)
        assert_problem(response, 404)
        assert "secret-event" not in response.text or "events/secret-event" in path

    assert_problem(
        await api.call("POST", "/v1/organizations", json={"name": "C"}, token=token_a), 403
    )
    listed = await api.call("GET", "/v1/organizations", token=token_a, expect=200)
    assert [o["id"] for o in listed.json()["data"]] == [a]
    # A's own events do not include B's: A's event with B's id is a new event, not a conflict.
    mine = await api.publish(a, id="secret-event", type="other", data={"x": 1})
    assert mine.status_code == 202
    # And B is untouched.
    await api.call("GET", f"/v1/organizations/{b}/endpoints/{b_endpoint}", expect=200)
    keys = await api.call("GET", f"/v1/organizations/{b}/keys", expect=200)
    assert keys.json()["data"][0]["revoked_at"] is None
    events = await api.call("GET", f"/v1/organizations/{b}/events", expect=200)
    assert [e["id"] for e in events.json()["data"]] == ["secret-event"]
    assert events.json()["data"][0]["type"] == "invoice.paid"
