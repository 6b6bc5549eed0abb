"""Handing new deliveries to a worker of the same process as they are published.

A worker that has caught up (its last claim found less than it asked for) opens a
:class:`HandOff` with the room it has: in all, and for each endpoint. While it is open, a store
that supports it leases each new due delivery it publishes to that worker in the publish's own
transaction, as long as room is left, and passes the leased deliveries to ``deliver`` once the
transaction has committed. The worker starts them at once: no wake-up, no claim round trip to
the database, no second write of the row (publish-to-first-attempt latency, and the writer's
work per delivery). A delivery handed over is leased exactly as a claimed one: should the
process die, its lease runs out and any worker claims it.

The worker closes the hand-off before it claims and reopens it only when caught up again, so a
backlog (older due work, other organizations' included) is always taken through the fair
claim, never overtaken by a stream of new publishes.

``take`` runs on the store's writer thread, ``open``/``close`` in the worker's event loop: the
counts are guarded by a lock. The worker closes the hand-off as soon as it is told to stop; a
publish already leasing to it may still commit after that, so before it exits the worker waits
for such hand-overs (``Store.hand_off_settled``) and gives back, with what it claimed ahead,
every delivery it was handed but did not start: the next worker claims them at once, and only
a crash leaves one to wait out its lease.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from .models import ClaimedDelivery

__all__ = ["HandOff"]


class HandOff:
    """Room for new deliveries a worker (``worker_id``) takes straight from publishes."""

    def __init__(
        self,
        worker_id: str,
        lease_seconds: float,
        deliver: Callable[[list[ClaimedDelivery]], None],
    ) -> None:
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.deliver = deliver  # called in the worker's event loop, after the commit
        self._lock = threading.Lock()
        self._open = False
        self._total = 0
        self._rooms: dict[str, int] = {}
        self._default = 0
        # A new due delivery was left for the claim (no room, or the hand-off was closed).
        self.missed = False

    def open(self, total: int, rooms: Mapping[str, int], default: int) -> None:
        """Take up to ``total`` new deliveries, ``rooms[e]`` of endpoint ``e`` and ``default``
        of any other."""
        with self._lock:
            self._open = total > 0
            self._total = total
            self._rooms = dict(rooms)
            self._default = default
            self.missed = False

    def close(self) -> None:
        """Take nothing more (before the worker claims, and when it stops)."""
        with self._lock:
            self._open = False
            self._total = 0
            self._rooms = {}

    @property
    def is_open(self) -> bool:
        return self._open

    def take(self, endpoint_id: str) -> bool:
        """Whether the worker takes one more new delivery of ``endpoint_id`` (counted)."""
        with self._lock:
            if not self._open:
                self.missed = True
                return False
            room = self._rooms.get(endpoint_id, self._default)
            if room <= 0:
                self.missed = True
                return False
            self._rooms[endpoint_id] = room - 1
            self._total -= 1
            if self._total <= 0:
                self._open = False
            return True
