"""The publish front (service/fastpath.py): it answers valid publishes exactly as the route would,
and hands everything else to the route, whose answers (401, 404, 409, 413, 422) stay the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.types import Receive, Scope, Send

from ascend_webhooks.service.schemas import EventBatchResult, EventPublished
from ascend_webhooks.store import Store
from tests.support.api import Api, api_settings, assert_problem, running_api

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
    assert not_json.status_code in (400, 422)
    assert_problem(await api.call("POST", path, token="aw_unknown", json={}), 401)
    assert_problem(await api.publish("org_nobody"), 404)
    assert counted.calls == 7  # each went to the route

    # Nothing of those was stored.
    listed = await api.call("GET", f"{path}?limit=10", expect=200)
    assert [e["id"] for e in listed.json()["data"]] == ["evt_known"]


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
