"""Deliveries: listing with filters, the detail with attempts, retrying a failed one by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from ascend_webhooks.service.schemas import DeliveryList, DeliveryOut
from ascend_webhooks.store import Store
from ascend_webhooks.store.models import Attempt, AttemptOutcome, DeliveryStatus
from tests.support.api import Api, api_settings, assert_problem, running_api


@pytest.fixture
async def api(store: Store, database_url: str) -> AsyncIterator[Api]:
    async with running_api(api_settings(database_url), store=store) as running:
        yield running


async def _fail_everything(store: Store) -> None:
    """Play the worker: one failed attempt for every due delivery, and give up on it."""
    claimed = await store.claim("test-worker", 100, 30)
    now = datetime.now(UTC)
    await store.record(
        "test-worker",
        [
            AttemptOutcome(
                delivery_id=c.id,
                attempt=Attempt(
                    number=c.attempt_number,
                    started_at=now - timedelta(milliseconds=20),
                    duration_ms=12.5,
                    status_code=500,
                    error="status_500",
                    response_excerpt="boom",
                ),
                status=DeliveryStatus.FAILED,
                next_attempt_at=None,
            )
            for c in claimed
        ],
    )


async def test_delivery_lifecycle_through_the_api(api: Api, store: Store) -> None:
    org = await api.organization()
    endpoint = await api.endpoint(org)
    other = await api.endpoint(org, event_types=["payout.paid"])
    event = (await api.publish(org, id="e1", type="invoice.paid")).json()
    (summary,) = event["deliveries"]
    path = f"/v1/organizations/{org}/deliveries/{summary['id']}"

    pending = DeliveryOut.model_validate((await api.call("GET", path, expect=200)).json())
    assert pending.event_id == "e1"
    assert pending.endpoint_id == endpoint
    assert pending.status == "pending"
    assert pending.attempt_count == 0
    assert pending.next_attempt_at is not None
    assert pending.attempts == []
    assert_problem(await api.call("POST", f"{path}/retry"), 409)  # only failed ones

    await _fail_everything(store)
    failed = DeliveryOut.model_validate((await api.call("GET", path, expect=200)).json())
    assert failed.status == "failed"
    assert failed.attempt_count == 1
    assert failed.next_attempt_at is None
    (attempt,) = failed.attempts
    assert attempt.number == 1
    assert attempt.status_code == 500
    assert attempt.error == "status_500"
    assert attempt.duration_ms == 12.5
    assert attempt.response_excerpt == "boom"
    raw = (await api.call("GET", path)).json()
    assert set(raw) >= {
        "id", "event_id", "endpoint_id", "status", "attempt_count", "next_attempt_at", "attempts"
    }  # fmt: skip
    assert set(raw["attempts"][0]) == {
        "number", "status_code", "error", "duration_ms", "started_at", "response_excerpt"
    }  # fmt: skip

    retried = await api.call("POST", f"{path}/retry", expect=202)
    assert DeliveryOut.model_validate(retried.json()).status == "pending"
    assert retried.json()["attempts"][0]["number"] == 1  # history is kept
    assert_problem(await api.call("POST", f"{path}/retry"), 409)

    listing = f"/v1/organizations/{org}/deliveries"
    everything = DeliveryList.model_validate((await api.call("GET", listing)).json())
    assert [d.id for d in everything.data] == [summary["id"]]
    for params, expected in [
        ({"status": "pending"}, [summary["id"]]),
        ({"status": "failed"}, []),
        ({"endpoint_id": endpoint}, [summary["id"]]),
        ({"endpoint_id": other}, []),
    ]:
        page = await api.call("GET", listing, params=params, expect=200)
        assert [d["id"] for d in page.json()["data"]] == expected, params
    assert_problem(await api.call("GET", listing, params={"status": "lost"}), 422)
    assert_problem(await api.call("GET", listing, params={"after": "nonsense"}), 400)


async def test_delivery_pages_newest_first(api: Api) -> None:
    org = await api.organization()
    await api.endpoint(org)
    ids = [(await api.publish(org, id=f"e{n}")).json()["deliveries"][0]["id"] for n in range(3)]
    listing = f"/v1/organizations/{org}/deliveries"
    first = (await api.call("GET", listing, params={"limit": 2}, expect=200)).json()
    rest = (
        await api.call("GET", listing, params={"after": first["next_cursor"]}, expect=200)
    ).json()
    assert [d["id"] for d in first["data"] + rest["data"]] == ids[::-1]


async def test_unknown_delivery_is_404(api: Api) -> None:
    org = await api.organization()
    assert_problem(await api.call("GET", f"/v1/organizations/{org}/deliveries/dlv_x"), 404)
    assert_problem(await api.call("POST", f"/v1/organizations/{org}/deliveries/dlv_x/retry"), 404)
