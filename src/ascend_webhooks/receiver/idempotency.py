"""Handle each event id once, although Ascend delivers at least once.

The protocol is a small lease, shaped for at-least-once delivery::

    claim = store.claim(event.id)      # atomically: absent (or lease expired) -> "processing"
    if claim:                          # Claim.ACQUIRED is the only truthy value
        try:
            router.dispatch_sync(event)
        except Exception:
            store.release(event.id)    # forget it: the sender's retry runs the handlers again
            raise
        store.complete(event.id)       # "done": later deliveries are acknowledged, not re-run
    elif claim is Claim.DONE: ...      # handled before: answer 200
    else: ...                          # Claim.IN_PROGRESS: being handled now; answer non-200 so
                                       # the sender comes back once the outcome is known

Two time limits: ``processing_ttl`` is the lease (a process that dies mid-handler holds the id
for at most that long, so it must exceed your slowest handler), ``done_ttl`` is how long a
handled id is remembered (Ascend retries for about 16 hours; a week is the default).

``release`` only removes the claim it ends, and only while that claim is still "processing"
(each claim holds a token of its own): a handler whose lease ran out cannot erase the claim
another delivery took over meanwhile, in another process or in the same one.

Backends: :class:`MemoryIdempotencyStore` (one process), :class:`SQLiteIdempotencyStore` (the
processes of one machine), :class:`RedisIdempotencyStore` / :class:`AsyncRedisIdempotencyStore`
(any number of machines). Another backend only needs the three methods.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ._claims import (
    DEFAULT_DONE_TTL,
    DEFAULT_PROCESSING_TTL,
    AsyncIdempotencyStore,
    Claim,
    ClaimTokens,
    IdempotencyStore,
    check_ttls,
)
from ._redis import AsyncRedisIdempotencyStore, RedisIdempotencyStore
from ._sqlite import SQLiteIdempotencyStore

__all__ = [
    "DEFAULT_DONE_TTL",
    "DEFAULT_PROCESSING_TTL",
    "AsyncIdempotencyStore",
    "AsyncRedisIdempotencyStore",
    "Claim",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "RedisIdempotencyStore",
    "SQLiteIdempotencyStore",
    "check_ttls",
]


@dataclass(slots=True)
class _Entry:
    done: bool
    expires_at: float
    token: str | None = None  # of the claim, while "processing"


class MemoryIdempotencyStore:
    """Event ids in this process's memory: thread-safe, TTL-bound and size-bound.

    Right for a single process (and for tests). Several workers or machines need a shared
    store (SQLite on one machine, Redis across machines), or each would handle a redelivered
    event once per process. Past ``max_entries``, the oldest ids are forgotten first.
    """

    def __init__(
        self,
        *,
        processing_ttl: float = DEFAULT_PROCESSING_TTL,
        done_ttl: float = DEFAULT_DONE_TTL,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_ttls(processing_ttl, done_ttl)
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._processing_ttl = processing_ttl
        self._done_ttl = done_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = ClaimTokens(max_entries)
        # Insertion order is age order: a claim moves its id to the end.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def claim(self, event_id: str) -> Claim:
        """Atomically take ``event_id`` if nobody holds it and it was not handled."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(event_id)
            if entry is not None and entry.expires_at > now:
                return Claim.DONE if entry.done else Claim.IN_PROGRESS
            token = self._tokens.new(event_id)
            self._entries[event_id] = _Entry(False, now + self._processing_ttl, token)
            self._entries.move_to_end(event_id)
            self._evict(now)
        return Claim.ACQUIRED

    def complete(self, event_id: str) -> None:
        """Mark ``event_id`` handled: later claims return :attr:`Claim.DONE`."""
        with self._lock:
            self._tokens.end(event_id)
            self._entries[event_id] = _Entry(True, self._clock() + self._done_ttl)

    def release(self, event_id: str) -> None:
        """Drop the oldest "processing" claim on ``event_id`` (if it still holds it) so a
        retry can take it."""
        with self._lock:
            token = self._tokens.end(event_id)
            entry = self._entries.get(event_id)
            if entry is not None and not entry.done and token is not None and entry.token == token:
                del self._entries[event_id]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _evict(self, now: float) -> None:
        # Drop expired ids from the old end, then the oldest ids beyond the bound.
        while self._entries:
            oldest_id, oldest = next(iter(self._entries.items()))
            if oldest.expires_at > now and len(self._entries) <= self._max_entries:
                break
            del self._entries[oldest_id]
