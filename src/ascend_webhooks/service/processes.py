"""Delivery processes started by ``serve --delivery-processes N`` and kept running beside it.

One Python process runs one event loop under one GIL: ``serve`` on its own uses about one core,
however many the machine has. Each process started here is an ordinary
``ascend-webhooks worker`` on the same database, so it shares the work through the store's
leases exactly as workers on other machines do; on SQLite, WAL lets the processes of one
machine write the same file in turn. Supervising them takes little enough (start, restart
after an unexpected exit, which is one with a status other than 0, stop) that asyncio's
subprocesses do it without a process-manager dependency.

With ``ASCEND_WEBHOOKS_METRICS_PORT=P`` (which ``serve`` itself does not use: its ``/metrics``
is on its own port), delivery process N serves its ``/metrics`` and ``/healthz`` on port P+N-1,
the same port again after a restart.

A child follows its parent: ``--stop-with-parent PID`` makes the worker stop (gracefully, as on
SIGTERM) once that process is gone, so a ``serve`` killed outright leaves no orphan behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

__all__ = ["METRICS_PORT_ENV", "DeliveryProcesses", "watch_parent"]

log = logging.getLogger("ascend_webhooks.service")

_FIRST_RESTART_DELAY = 1.0
_MAX_RESTART_DELAY = 30.0
_HEALTHY_AFTER = 60.0  # a child that ran this long before exiting starts again after 1 s
_PARENT_CHECK_SECONDS = 1.0
#: Where a worker serves its metrics; delivery process N takes this port + N - 1.
METRICS_PORT_ENV = "ASCEND_WEBHOOKS_METRICS_PORT"
DATABASE_URL_ENV = "ASCEND_WEBHOOKS_DATABASE_URL"


class DeliveryProcesses:
    """``count`` worker processes on ``database_url``, restarted if they exit unexpectedly."""

    def __init__(
        self,
        count: int,
        database_url: str,
        *,
        stop_timeout: float,
        command: Sequence[str] | None = None,
    ) -> None:
        self.count = count
        self._database_url = database_url
        # A child drains like any worker: its attempts in flight end within the attempt timeout.
        self._stop_timeout = stop_timeout
        self._command = list(command or (sys.executable, "-m", "ascend_webhooks"))
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    @property
    def pids(self) -> list[int]:
        """The pids of the children running now, in slot order."""
        return [self._processes[slot].pid for slot in sorted(self._processes)]

    def start(self) -> None:
        """Start every child; each slot then keeps its child running until ``stop``."""
        for slot in range(1, self.count + 1):
            self._tasks.append(asyncio.create_task(self._keep(slot), name=f"delivery-{slot}"))

    def signal_stop(self) -> None:
        """Ask every child to stop (SIGTERM: it finishes its attempts in flight)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for process in self._processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)

    async def stop(self) -> None:
        """Stop every child and wait for it; one still running after the timeout is killed."""
        self.signal_stop()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=self._stop_timeout)
        for slot, process in self._processes.items():
            if process.returncode is None:
                log.warning("delivery process %d (pid %d) did not stop: killed", slot, process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if pending:
            await asyncio.wait(pending)

    async def _keep(self, slot: int) -> None:
        delay = _FIRST_RESTART_DELAY
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                process = await self._spawn(slot)
            except OSError as exc:
                log.error("cannot start delivery process %d: %s", slot, exc)
                status: int | None = None
            else:
                self._processes[slot] = process
                log.info("delivery process %d started (pid %d)", slot, process.pid)
                if self._stopping.is_set():  # stop() came while it was being started
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
                status = await process.wait()
            if self._stopping.is_set():
                return
            if status == 0:
                # A worker exits 0 only when told to stop (SIGTERM to it alone, or to the whole
                # group, as systemd sends, arriving before serve's own): not restarted.
                log.info("delivery process %d stopped (status 0)", slot)
                return
            if time.monotonic() - started >= _HEALTHY_AFTER:
                delay = _FIRST_RESTART_DELAY
            log.error(
                "delivery process %d exited unexpectedly (status %s); starting it again in %g s",
                slot,
                status,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, _MAX_RESTART_DELAY)

    async def _spawn(self, slot: int) -> asyncio.subprocess.Process:
        args = [*self._command, "worker", "--stop-with-parent", str(os.getpid())]
        # In the environment, not on the command line: the URL may hold a password, and any
        # user of the machine can read a process's arguments (ps), not its environment.
        env = dict(os.environ)
        env[DATABASE_URL_ENV] = self._database_url
        base = env.get(METRICS_PORT_ENV, "").strip()
        if base:  # (the child refuses a bad value in one line, as `worker` always does)
            env[METRICS_PORT_ENV] = str(int(base) + slot - 1) if base.isdigit() else base
        # A session of its own: Ctrl-C in a terminal reaches serve alone, which stops its
        # children in order, instead of each child stopping (and being restarted) on its own.
        return await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True
        )


async def watch_parent(parent_pid: int, on_gone: Callable[[], None]) -> None:
    """Call ``on_gone()`` once the process ``parent_pid`` is no longer this one's parent."""
    # No portable event says that the parent died: its children are handed to another parent.
    while os.getppid() == parent_pid:  # noqa: ASYNC110
        await asyncio.sleep(_PARENT_CHECK_SECONDS)
    log.warning("the serve process %d is gone: stopping", parent_pid)
    on_gone()
