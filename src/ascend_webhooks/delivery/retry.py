"""The retry policy: after an attempt, is the delivery done, due again (when?), or failed?

SPEC section 1: only a 200 is a success; after a failed first attempt come at most 10
retries on a backoff schedule with jitter, then the delivery is ``failed``. The schedule is
``Settings.retry_schedule``: its k-th delay (1-based) is waited before retry k, so a schedule
of n delays allows n + 1 attempts per round. A manual retry starts a new round
(``ClaimedDelivery.round_attempt`` back to 1).

Jitter spreads retries of deliveries that failed together (an endpoint outage) so that they do
not all come back in the same instant: each delay is drawn uniformly from
``delay * (1 - jitter) .. delay * (1 + jitter)``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ..service.settings import MAX_RETRY_DELAY
from ..store.models import DeliveryStatus

__all__ = ["RetryPolicy", "is_success"]


def is_success(status_code: int | None, error: str | None) -> bool:
    """The one success rule of the protocol: a response with status exactly 200."""
    return error is None and status_code == 200


@dataclass(frozen=True)
class RetryPolicy:
    """Decides the delivery's next state from the attempt's number within its round."""

    schedule: Sequence[float]
    jitter: float = 0.2
    # Not for cryptography: only spreads retries in time.
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if any(delay < 0 for delay in self.schedule):
            raise ValueError("retry delays must not be negative")
        if any(delay > MAX_RETRY_DELAY for delay in self.schedule):
            # (past it, now + delay can overflow the date: every failed attempt would crash)
            raise ValueError(f"retry delays must not exceed {MAX_RETRY_DELAY:g} s (7 days)")

    @property
    def max_attempts(self) -> int:
        """Attempts per round: the first one plus one per scheduled delay."""
        return len(self.schedule) + 1

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based), jitter applied."""
        base = self.schedule[retry_number - 1]
        return base * self.rng.uniform(1 - self.jitter, 1 + self.jitter)

    def decide(
        self, round_attempt: int, succeeded: bool, now: datetime | None = None
    ) -> tuple[DeliveryStatus, datetime | None]:
        """After attempt ``round_attempt`` (1-based in its round): the status and next due time.

        Success → (SUCCEEDED, None). A failure with delays left → (PENDING, now + delay).
        A failure after the last scheduled retry → (FAILED, None). ``now`` defaults to the
        current time, read only when a retry is scheduled (the worker decides thousands of
        successes a second, which need no clock).
        """
        if round_attempt < 1:
            raise ValueError("round_attempt is 1-based")
        if succeeded:
            return DeliveryStatus.SUCCEEDED, None
        if round_attempt <= len(self.schedule):
            if now is None:
                now = datetime.now(UTC)
            return DeliveryStatus.PENDING, now + timedelta(seconds=self.delay(round_attempt))
        return DeliveryStatus.FAILED, None
