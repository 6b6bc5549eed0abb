"""The retry policy: exactly-200 success, the schedule's length bounds a round, jitter bounds."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from ascend_webhooks.delivery.retry import RetryPolicy, is_success
from ascend_webhooks.service.settings import DEFAULT_RETRY_SCHEDULE
from ascend_webhooks.store.models import DeliveryStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_default_schedule_allows_eleven_attempts_per_round() -> None:
    policy = RetryPolicy(DEFAULT_RETRY_SCHEDULE, jitter=0.2)
    assert policy.max_attempts == 11
    statuses = [policy.decide(k, False, NOW)[0] for k in range(1, 12)]
    assert statuses == [DeliveryStatus.PENDING] * 10 + [DeliveryStatus.FAILED]
    assert policy.decide(11, False, NOW) == (DeliveryStatus.FAILED, None)


@pytest.mark.parametrize("k", range(1, 11))
def test_retry_k_waits_the_kth_delay_within_jitter(k: int) -> None:
    policy = RetryPolicy(DEFAULT_RETRY_SCHEDULE, jitter=0.2, rng=random.Random(k))  # noqa: S311 - seeded jitter
    base = DEFAULT_RETRY_SCHEDULE[k - 1]
    for _ in range(200):
        status, when = policy.decide(k, False, NOW)
        assert status is DeliveryStatus.PENDING
        assert when is not None
        delay = (when - NOW).total_seconds()
        assert base * 0.8 - 1e-6 <= delay <= base * 1.2 + 1e-6


def test_jitter_actually_spreads_and_zero_jitter_is_exact() -> None:
    spread = RetryPolicy((100.0,), jitter=0.2, rng=random.Random(1))  # noqa: S311 - seeded jitter
    delays = {spread.decide(1, False, NOW)[1] for _ in range(50)}
    assert len(delays) > 40
    exact = RetryPolicy((100.0,), jitter=0.0)
    assert exact.decide(1, False, NOW) == (DeliveryStatus.PENDING, NOW + timedelta(seconds=100))


def test_success_ends_the_delivery_at_any_attempt() -> None:
    policy = RetryPolicy((1.0, 2.0))
    for k in (1, 2, 3):
        assert policy.decide(k, True, NOW) == (DeliveryStatus.SUCCEEDED, None)


def test_empty_schedule_means_one_attempt() -> None:
    policy = RetryPolicy(())
    assert policy.max_attempts == 1
    assert policy.decide(1, False, NOW) == (DeliveryStatus.FAILED, None)


@pytest.mark.parametrize(
    ("status_code", "error", "expected"),
    [
        (200, None, True),
        (201, None, False),
        (202, None, False),
        (204, None, False),
        (299, None, False),
        (301, None, False),
        (304, None, False),
        (400, None, False),
        (404, None, False),
        (500, None, False),
        (503, None, False),
        (None, "timeout", False),
        (None, "connect_refused", False),
        (200, "timeout", False),  # a 200 whose body never finished is no success
    ],
)
def test_only_exactly_200_is_success(
    status_code: int | None, error: str | None, expected: bool
) -> None:
    assert is_success(status_code, error) is expected


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy((1.0,), jitter=1.0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy((-1.0,))
    with pytest.raises(ValueError, match="1-based"):
        RetryPolicy((1.0,)).decide(0, False, NOW)


def test_without_now_a_retry_is_scheduled_from_the_current_time() -> None:
    policy = RetryPolicy((60.0,), jitter=0.0)
    before = datetime.now(UTC)
    status, when = policy.decide(1, False)
    after = datetime.now(UTC)
    assert status is DeliveryStatus.PENDING
    assert when is not None
    assert before + timedelta(seconds=60) <= when <= after + timedelta(seconds=60)
    assert policy.decide(1, True) == (DeliveryStatus.SUCCEEDED, None)
    assert policy.decide(2, False) == (DeliveryStatus.FAILED, None)


def test_delays_past_seven_days_are_refused() -> None:
    assert RetryPolicy((604800.0,)).max_attempts == 2
    with pytest.raises(ValueError, match="7 days"):
        RetryPolicy((5.0, 1e12))
