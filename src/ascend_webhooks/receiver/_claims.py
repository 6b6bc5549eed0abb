"""The idempotency-store contract shared by every backend (see :mod:`.idempotency`)."""

from __future__ import annotations

import enum
import uuid
from typing import Protocol, runtime_checkable

__all__ = [
    "DEFAULT_DONE_TTL",
    "DEFAULT_PROCESSING_TTL",
    "AsyncIdempotencyStore",
    "Claim",
    "IdempotencyStore",
    "check_ttls",
    "new_owner",
]

#: Seconds an event may stay "processing" before another delivery may take it over.
DEFAULT_PROCESSING_TTL = 300.0
#: Seconds a handled event id is remembered.
DEFAULT_DONE_TTL = 7 * 24 * 3600.0


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
        """Atomically take ``event_id`` if nobody holds it and it was not handled."""
        ...

    def complete(self, event_id: str) -> None:
        """Mark ``event_id`` handled: later claims return :attr:`Claim.DONE`."""
        ...

    def release(self, event_id: str) -> None:
        """Drop this store's "processing" claim on ``event_id`` so a retry can take it."""
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
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


def new_owner() -> str:
    """A unique owner tag for one store object: ``release`` removes only its own claims."""
    return uuid.uuid4().hex
