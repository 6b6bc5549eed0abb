"""Prometheus metrics of the delivery service, served at ``/metrics``.

One module so that the API and the workers count into the same registry, whichever process
runs them.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["ATTEMPTS", "ATTEMPT_SECONDS", "EVENTS_PUBLISHED"]

EVENTS_PUBLISHED = Counter(
    "ascend_webhooks_events_published_total", "Events accepted (202) by the API."
)
ATTEMPTS = Counter(
    "ascend_webhooks_attempts_total",
    "Delivery attempts by outcome: succeeded, retrying or failed.",
    ["outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "ascend_webhooks_attempt_duration_seconds",
    "Time from connect to the last byte of the response, per attempt.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
