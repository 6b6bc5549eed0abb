"""Wake-ups for idle workers: a dedicated LISTEN connection turned into an ``asyncio.Event``.

Whatever makes work due (a publish, a retry, an unblocked ordering key, a release) sends
``NOTIFY ascend_webhooks_work`` right after its commit (:class:`Notifier`), so every worker
process on the database learns of new work within milliseconds of the commit. The connection is
outside the pool (a listener must stay on one session) and comes back by itself with capped
exponential backoff after a database restart; while it is away, waiters fall back to polling,
and after it returns they are woken once, since notifications sent meanwhile were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from ._postgres_sql import CHANNEL

__all__ = ["Notifier", "WorkSignal"]

log = logging.getLogger(__name__)

_TRANSIENT = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class WorkSignal:
    """Turns NOTIFYs on the work channel into a wake-up for :meth:`wait`."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        poll_interval: float = 1.0,
        health_interval: float = 15.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._connect = connect
        self._poll_interval = poll_interval
        self._health_interval = health_interval
        self._max_backoff = max_backoff
        self._event = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sessions = 0  # how many times the listener has connected (for health and tests)
        # Moves on every notification, local wake-up, connect and disconnect: a reading that
        # has not moved since (while connected) means no work was announced meanwhile.
        self.generation = 0

    @property
    def connected(self) -> bool:
        """Whether notifications are being received right now."""
        return self._connected.is_set()

    def start(self) -> None:
        """Start listening in the background (returns at once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pg-listen")

    async def wait_connected(self, within: float) -> bool:
        """Wait until the listener is connected; False after ``within`` seconds."""
        try:
            await asyncio.wait_for(self._connected.wait(), within)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def notify_local(self) -> None:
        """Wake this process's waiters without a round trip (the NOTIFY follows anyway)."""
        self.generation += 1
        self._event.set()

    async def wait(self, max_wait: float) -> None:
        """Return on a notification, or after ``max_wait`` (sooner while disconnected)."""
        if not self._event.is_set():
            timeout = max_wait if self.connected else min(max_wait, self._poll_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), max(timeout, 0.0))
        self._event.clear()

    def _on_notify(self, *_args: object) -> None:
        self.generation += 1
        self._event.set()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(CHANNEL, self._on_notify)
                self.sessions += 1
                self.generation += 1
                self._connected.set()
                self._event.set()  # notifications sent while we were away are gone
                backoff = 0.05
                await self._watch(conn, lost)
            except _TRANSIENT as exc:
                log.warning("work listener disconnected (%s); reconnecting", type(exc).__name__)
            finally:
                self._connected.clear()
                self.generation += 1
                if conn is not None:
                    conn.terminate()
            self._event.set()  # let pollers look now rather than after a full wait
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return when the connection is gone; a periodic query notices silent network loss."""
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._health_interval)
            if not lost.is_set():
                await conn.fetchval("SELECT 1", timeout=5)


class Notifier:
    """Sends NOTIFY after commits, coalescing: one in flight, at most one more queued behind it.

    Any number of commits during one NOTIFY's round trip are covered by the next one. A NOTIFY
    that fails (database away) is dropped: workers still poll, and the listener wakes them all
    when it reconnects.
    """

    def __init__(self, send: Callable[[], Awaitable[None]]) -> None:
        self._send = send
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def kick(self) -> None:
        """Make sure a NOTIFY goes out after this moment."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pg-notify")
        else:
            self._again = True

    async def flush(self) -> None:
        """Wait for the NOTIFY in flight, if any (before closing the pool)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self._send()
            except Exception as exc:  # a lost hint must never fail a caller, nor crash the loop
                log.warning("NOTIFY not sent (%s); workers will poll", type(exc).__name__)
            if not self._again:
                return


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()
