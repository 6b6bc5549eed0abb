"""``GET /metrics`` counts the deliveries table at most once per few seconds, shared by scrapes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ascend_webhooks.service.counts_cache import COUNTS_TTL, CachedCounts
from ascend_webhooks.store import Store
from ascend_webhooks.store.base import StoreUnavailableError
from ascend_webhooks.store.models import DeliveryStatus
from tests.support.api import Api, api_settings, running_api


class CountingCalls:
    """A thin wrapper around the real ``store.delivery_counts`` that counts its calls."""

    def __init__(self, store: Store) -> None:
        self.real = store.delivery_counts
        self.calls = 0

    async def __call__(self) -> Mapping[DeliveryStatus, int]:
        self.calls += 1
        await asyncio.sleep(0.05)  # long enough for concurrent scrapes to overlap
        return await self.real()


def pending(text: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = families["ascend_webhooks_deliveries"].samples
    return next(s.value for s in samples if s.labels["status"] == "pending")


async def scrape(api: Api) -> str:
    response = await api.call("GET", "/metrics", token=None, expect=200)
    return response.text


async def test_scrapes_within_the_ttl_share_one_count(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingCalls(store)
    monkeypatch.setattr(store, "delivery_counts", counting)
    async with running_api(api_settings(database_url), store=store) as api:
        org = await api.organization()
        await api.endpoint(org)
        await api.publish(org, id="e1")

        assert pending(await scrape(api)) == 1.0
        await api.publish(org, id="e2")
        assert pending(await scrape(api)) == 1.0  # the cached count, a few seconds old at most
        assert counting.calls == 1

        # Concurrent scrapes of a stale cache wait for one query, not one each.
        cache: CachedCounts = api.app.state.delivery_counts
        now = cache.clock()
        cache.clock = lambda: now + COUNTS_TTL + 0.01
        texts = await asyncio.gather(*(scrape(api) for _ in range(5)))
        assert counting.calls == 2
        assert [pending(text) for text in texts] == [2.0] * 5


async def test_the_counts_are_queried_again_after_the_ttl() -> None:
    now = [100.0]
    calls = 0

    async def query() -> Mapping[DeliveryStatus, int]:
        nonlocal calls
        calls += 1
        return {DeliveryStatus.PENDING: calls}

    cache = CachedCounts(query, ttl=5.0, clock=lambda: now[0])
    assert await cache.get() == {DeliveryStatus.PENDING: 1}
    now[0] += 4.9
    assert await cache.get() == {DeliveryStatus.PENDING: 1}
    now[0] += 0.2
    assert await cache.get() == {DeliveryStatus.PENDING: 2}
    assert calls == 2


async def test_a_failed_count_is_not_cached() -> None:
    attempts = 0

    async def query() -> Mapping[DeliveryStatus, int]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("the database restarted")
        return {DeliveryStatus.PENDING: 7}

    cache = CachedCounts(query)
    with pytest.raises(ConnectionError):
        await cache.get()
    assert await cache.get() == {DeliveryStatus.PENDING: 7}
    assert attempts == 2


async def test_the_metrics_are_served_while_the_database_is_down(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape during an outage answered 503, and every counter of the process went unseen
    just when it mattered; the deliveries gauge is left out then, not shown stale."""
    async with running_api(api_settings(database_url), store=store) as api:
        org = await api.organization()
        await api.endpoint(org)
        await api.publish(org, id="e1")
        families = {f.name: f for f in text_string_to_metric_families(await scrape(api))}
        assert families["ascend_webhooks_database_up"].samples[0].value == 1.0

        async def down() -> Mapping[DeliveryStatus, int]:
            raise StoreUnavailableError("PostgreSQL is unavailable")

        cache: CachedCounts = api.app.state.delivery_counts
        monkeypatch.setattr(cache, "query", down)
        now = cache.clock()
        cache.clock = lambda: now + COUNTS_TTL + 0.01  # the cached count is stale: asked again
        families = {f.name: f for f in text_string_to_metric_families(await scrape(api))}
        assert families["ascend_webhooks_database_up"].samples[0].value == 0.0
        assert not families["ascend_webhooks_deliveries"].samples
        assert "ascend_webhooks_events_published" in families  # the process's own counters

        monkeypatch.undo()
        cache.clock = lambda: now + 2 * (COUNTS_TTL + 0.01)
        assert pending(await scrape(api)) == 1.0  # back once the database answers
