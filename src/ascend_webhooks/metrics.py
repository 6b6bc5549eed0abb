"""Prometheus metrics of the delivery service, served at ``/metrics``.

One module so that the API and the workers count into the same registry, whichever process
runs them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import Counter, Histogram

__all__ = ["ATTEMPTS", "ATTEMPT_SECONDS", "EVENTS_PUBLISHED", "BatchHistogram"]


class BatchHistogram(Histogram):
    """A Histogram that also takes many observations at once (the worker's flush loop).

    ``observe_many(values)`` leaves the same buckets, count and sum as ``observe`` on each
    value (a test of ``tests/integration/test_worker.py`` holds it to that), at one lock round
    per bucket touched instead of two per value: a worker observes thousands of attempts a
    second.
    """

    def observe_many(self, amounts: Sequence[float]) -> None:
        """Observe every value of ``amounts`` (no exemplars)."""
        if not amounts:
            return
        self._raise_if_not_observable()  # type: ignore[no-untyped-call]
        bounds = self._upper_bounds  # ascending, the last one +Inf
        counts = [0] * len(bounds)
        for amount in amounts:
            counts[bisect_left(bounds, amount)] += 1  # the first bound >= amount, as observe
        self._sum.inc(sum(amounts))
        for index, count in enumerate(counts):
            if count:
                self._buckets[index].inc(count)


EVENTS_PUBLISHED = Counter(
    "ascend_webhooks_events_published_total", "Events accepted (202) by the API."
)
ATTEMPTS = Counter(
    "ascend_webhooks_attempts_total",
    "Delivery attempts by outcome: succeeded, retrying or failed.",
    ["outcome"],
)
ATTEMPT_SECONDS = BatchHistogram(
    "ascend_webhooks_attempt_duration_seconds",
    "Time from connect to the last byte of the response, per attempt.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
