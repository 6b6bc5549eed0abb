"""Opening the store when a command starts: wait for a database that does not answer yet.

A worker that a supervisor starts while PostgreSQL restarts, or before the database is up at
all (containers started together), must not die of it: the store is opened again with capped
exponential backoff (0.5 s, doubling, at most 5 s apart), one log line per failed try, for at
most ``ASCEND_WEBHOOKS_STARTUP_TIMEOUT`` seconds; then the command ends with one line saying
why. Only "cannot reach" errors (:class:`StoreUnavailableError`: refused, reset, timed out, the
server starting up or shutting down) are waited out. Everything else, which waiting cannot fix
(authentication, a database that does not exist, a schema from a newer release, a TLS
certificate that is not trusted, an unusable SQLite file), ends the command at once, also with
one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..store import Store, open_store
from ..store.base import StoreUnavailableError

__all__ = ["StartupError", "open_store_waiting"]

log = logging.getLogger("ascend_webhooks.service")

FIRST_DELAY = 0.5
MAX_DELAY = 5.0
# A try made just before the deadline still gets this long to connect (a handshake and the
# migration check take milliseconds on a live server).
_LAST_TRY_SECONDS = 1.0


class StartupError(Exception):
    """The store cannot be opened; the message is one line for the operator."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


async def _close_quietly(store: Store) -> None:
    with contextlib.suppress(Exception):
        await store.close()


async def open_store_waiting(
    database_url: str,
    give_up_after: float,
    *,
    stop: asyncio.Event | None = None,
    first_delay: float = FIRST_DELAY,
    max_delay: float = MAX_DELAY,
) -> Store | None:
    """The opened (migrated) store, once the database answers.

    Raises StartupError when ``give_up_after`` seconds pass without an answer, or at once for an
    error that waiting cannot fix; returns None if ``stop`` is set while waiting.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    delay = first_delay
    while True:
        store = open_store(database_url)
        try:
            async with asyncio.timeout(max(deadline - loop.time(), _LAST_TRY_SECONDS)):
                await store.open()
        except StoreUnavailableError as exc:
            reason = _one_line(exc)
        except TimeoutError:  # this try used up the time that was left
            await _close_quietly(store)
            raise StartupError(f"the database did not answer within {give_up_after:g} s") from None
        except Exception as exc:
            await _close_quietly(store)
            raise StartupError(f"cannot open the database: {_one_line(exc)}") from None
        else:
            return store
        await _close_quietly(store)
        left = deadline - loop.time()
        if left <= 0:
            raise StartupError(f"the database did not answer within {give_up_after:g} s ({reason})")
        wait = min(delay, left)
        log.warning("database not reachable (%s), retrying in %.1f s", reason, wait)
        if stop is None:
            await asyncio.sleep(wait)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return None
        delay = min(delay * 2, max_delay)
