"""The deliveries-by-status counts of ``GET /metrics``, cached for a few seconds.

Counting the deliveries table is a scan of the whole table (an index scan at best), and every
Prometheus server that scrapes an API process asks for it. Scrapes come every 15-60 s, so
counts a few seconds old tell the same story; caching them keeps several scrapers (or a
scraper plus a person with ``curl``) from multiplying the cost. A lock makes concurrent scrapes
that find the cache stale share one query instead of each starting their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from ..store.models import DeliveryStatus

__all__ = ["COUNTS_TTL", "CachedCounts"]

COUNTS_TTL = 5.0  # seconds; well under the usual scrape interval

Counts = Mapping[DeliveryStatus, int]


class CachedCounts:
    """``await cache.get()``: the counts, queried at most once per ``ttl`` seconds.

    ``query`` is the expensive call (``store.delivery_counts``). A query that raises is not
    cached: the next scrape tries again. ``clock`` is monotonic seconds (replaceable in tests).
    """

    def __init__(
        self,
        query: Callable[[], Awaitable[Counts]],
        *,
        ttl: float = COUNTS_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.query = query
        self.ttl = ttl
        self.clock = clock
        self._counts: Counts | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> Counts | None:
        if self._counts is not None and self.clock() < self._expires:
            return self._counts
        return None

    async def get(self) -> Counts:
        if (counts := self._fresh()) is not None:
            return counts
        async with self._lock:
            # Whoever held the lock before us may have just refreshed the counts.
            if (counts := self._fresh()) is not None:
                return counts
            counts = dict(await self.query())
            self._counts = counts
            self._expires = self.clock() + self.ttl
            return counts
