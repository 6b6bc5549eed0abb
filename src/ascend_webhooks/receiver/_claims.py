"""The idempotency-store contract shared by every backend (see :mod:`.idempotency`)."""

from __future__ import annotations

import enum
import math
import threading
import uuid
from collections import OrderedDict, deque
from typing import Protocol, runtime_checkable

__all__ = [
    "DEFAULT_DONE_TTL",
    "DEFAULT_PROCESSING_TTL",
    "AsyncIdempotencyStore",
    "Claim",
    "ClaimTokens",
    "IdempotencyStore",
    "check_ttls",
]

#: Seconds an event may stay "processing" before another delivery may take it over.
DEFAULT_PROCESSING_TTL = 300.0
#: Seconds a handled event id is remembered.
DEFAULT_DONE_TTL = 7 * 24 * 3600.0
#: The longest time limit any store takes: 100 years, in seconds.
MAX_TTL = 3_155_760_000


class Claim(enum.Enum):
    """The answer of ``claim()``; truthy only when the caller now owns the event."""

    ACQUIRED = "acquired"  #: yours: run the handlers, then complete() or release()
    DONE = "done"  #: handled before: acknowledge without running anything
    IN_PROGRESS = "in_progress"  #: being handled elsewhere right now

    def __bool__(self) -> bool:
        return self is Claim.ACQUIRED


@runtime_checkable
class IdempotencyStore(Protocol):
    """A blocking store of claimed and handled event ids (for Flask, Django, plain code)."""

    def claim(self, event_id: str) -> Claim:
        """Atomically take ``event_id`` if nobody holds it and it was not handled.

        The receiver runs the handlers only on :attr:`Claim.ACQUIRED` (or True); any value
        other than a :class:`Claim` is answered as an unavailable store (503).
        """
        ...

    def complete(self, event_id: str) -> None:
        """Mark ``event_id`` handled: later claims return :attr:`Claim.DONE`."""
        ...

    def release(self, event_id: str) -> None:
        """Drop this store's oldest "processing" claim on ``event_id`` (if it still holds it)
        so a retry can take it."""
        ...


class AsyncIdempotencyStore(Protocol):
    """The same three operations, as coroutines (for Starlette / FastAPI)."""

    async def claim(self, event_id: str) -> Claim:
        """Atomically take ``event_id`` if nobody holds it and it was not handled."""
        ...

    async def complete(self, event_id: str) -> None:
        """Mark ``event_id`` handled: later claims return :attr:`Claim.DONE`."""
        ...

    async def release(self, event_id: str) -> None:
        """Drop this store's "processing" claim on ``event_id`` so a retry can take it."""
        ...


def check_ttls(processing_ttl: float, done_ttl: float) -> None:
    """Reject time limits that cannot work (shared by every backend)."""
    for name, value in (("processing_ttl", processing_ttl), ("done_ttl", done_ttl)):
        # Finite too (NaN fails both comparisons): Redis needs a whole number of milliseconds,
        # so an infinite limit would work in memory and in SQLite and not in Redis.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value < math.inf
        ):
            raise ValueError(f"{name} must be a positive, finite number of seconds, not {value!r}")
        if value > MAX_TTL:
            # Past it, Redis refuses the expiry (milliseconds beyond 64 bits) and SQLite's
            # integer column overflows: a store would fail only when completing an event.
            raise ValueError(f"{name} must be at most 100 years ({MAX_TTL} seconds), not {value!r}")


class ClaimTokens:
    """The claims one store object holds: a token of its own for each, oldest first per id.

    A claim's row (or key) holds its token, and ``release`` removes a row only while it holds
    the token of this object's oldest open claim on that id. One token per store object was not
    enough: the receiver shares one store among all its requests (and a store made before
    gunicorn forks is shared by its workers), so the late failure of a handler whose lease had
    run out released the claim a retry had taken over meanwhile, and a third delivery ran the
    handlers beside it. Oldest first: the claims on one id of one object are leases taken over
    one after the other, and each ends (``complete`` or ``release``) in that order but for a
    handler outliving a younger one, whose release then frees nothing until its lease ends.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._open: OrderedDict[str, deque[str]] = OrderedDict()
        self._limit = limit  # claims never ended (a caller that gave up) are forgotten past it
        self._lock = threading.Lock()

    def new(self, event_id: str) -> str:
        """A token for a claim about to be made on ``event_id``."""
        token = uuid.uuid4().hex  # (os.urandom: distinct in every process, forked or not)
        with self._lock:
            self._open.setdefault(event_id, deque()).append(token)
            self._open.move_to_end(event_id)
            while len(self._open) > self._limit:
                self._open.popitem(last=False)
        return token

    def forget(self, event_id: str, token: str) -> None:
        """The claim ``token`` was not made after all."""
        with self._lock:
            tokens = self._open.get(event_id)
            if tokens is not None and token in tokens:
                tokens.remove(token)
                if not tokens:
                    del self._open[event_id]

    def end(self, event_id: str) -> str | None:
        """The token of this object's oldest open claim on ``event_id``, no longer open."""
        with self._lock:
            tokens = self._open.get(event_id)
            if not tokens:
                return None
            token = tokens.popleft()
            if not tokens:
                del self._open[event_id]
            return token
