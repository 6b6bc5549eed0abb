"""Wake-ups across the processes of one machine that share a SQLite file.

SQLite tells another connection that the file changed only when asked (``PRAGMA
data_version``), so an idle worker in another process (``serve --delivery-processes``, a
``worker`` beside ``serve``) used to find new work only at its next poll, every 0.25 s: with
one delivery process, the p99 latency at 500 events/s was 228 ms against 4-6 ms without it.
PostgreSQL has LISTEN/NOTIFY for this; SQLite has nothing, and no library does this one small
thing, so it is written here:

* Each store that waits for work binds a Unix datagram socket, its doorbell, in a directory
  shared by every process using the same database file: ``ascend-webhooks-<uid>/<hash of the
  file's real path>`` in the system's temporary directory (short enough for a socket's path
  whatever the database's; private to the user, as the file usually is).
* A store whose commit made work due rings every other doorbell there: one byte, sent without
  blocking, at most once a millisecond. A full doorbell is already ringing; one whose process
  is gone refuses the datagram, and its socket file is removed. The list of doorbells is read
  again whenever the folder changed, so a store that just began to wait is rung at once.
* A doorbell that opens also looks, within bounds, for the sockets of killed processes in the
  folders of other databases (nobody rings those if their database is not used again) and
  removes them, and the folders left empty.

Rings are hints, as NOTIFYs are: waiters still check ``data_version`` every 0.25 s, which
covers a ring lost or never sent (another user's process, a platform without Unix sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["Doorbell"]

log = logging.getLogger(__name__)

_RING_INTERVAL = 0.001  # at most one ring a millisecond per store: rings only say "look"
_REFRESH_SECONDS = 1.0  # the longest the list of other doorbells is trusted
# A folder changed this recently may change again within the same tick of its modification
# time (file systems keep coarse times, a few ms): its list is read again at every ring.
_SETTLED_NS = 50_000_000
_MAX_SOCKET_PATH = 100  # sun_path holds 104-108 bytes, by platform
_SWEEP_PROBES = 256  # the most doorbells of other databases looked at when one opens
_names = itertools.count(1)


def doorbell_directory(database: str) -> Path:
    """Where the doorbells of ``database``'s processes are (the same for every process)."""
    real = os.path.realpath(database)
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"ascend-webhooks-{uid}" / digest


class Doorbell:
    """This store's doorbell (bound on :meth:`open`) and its ringing of the others."""

    def __init__(self, database: str) -> None:
        self._directory = doorbell_directory(database)
        self._socket: socket.socket | None = None  # this store's doorbell, once it waits
        self._sender: socket.socket | None = None  # what rings the others
        self._path: Path | None = None
        self._others: list[Path] = []
        self._others_until = 0.0
        self._others_mtime = 0  # the folder's modification time when they were listed
        self._last_ring = 0.0
        self._pending: asyncio.TimerHandle | None = None
        self._usable = hasattr(socket, "AF_UNIX")

    def open(self, on_ring: Callable[[], None]) -> bool:
        """Bind this store's doorbell and call ``on_ring`` when it rings; False where that
        cannot be (the waiter then relies on polling alone)."""
        if self._socket is not None:
            return True
        if not self._usable:
            return False
        path = self._directory / f"{os.getpid()}.{next(_names)}"
        if len(str(path)) > _MAX_SOCKET_PATH or not self._make_directory():
            self._usable = False
            return False
        try:
            bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError as exc:
            log.warning("no wake-ups from other processes (%s): idle workers poll", exc)
            self._usable = False
            return False
        try:
            bell.setblocking(False)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a socket left by a process with our pid, long gone
            try:
                bell.bind(str(path))
            except FileNotFoundError:  # the last store of another process took the folder away
                if not self._make_directory():
                    bell.close()
                    self._usable = False
                    return False
                bell.bind(str(path))
            asyncio.get_running_loop().add_reader(bell.fileno(), self._drain, on_ring)
        except OSError as exc:
            bell.close()
            log.warning("no wake-ups from other processes (%s): idle workers poll", exc)
            self._usable = False
            return False
        self._socket, self._path = bell, path
        _sweep(self._directory.parent, keep=self._directory)
        return True

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        bell, self._socket = self._socket, None
        if bell is None:
            return
        with contextlib.suppress(RuntimeError, ValueError):  # the loop is closed already
            asyncio.get_running_loop().remove_reader(bell.fileno())
        bell.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
                self._directory.rmdir()  # if it was the last one (a store opening binds again)
            self._path = None

    def ring(self) -> None:
        """Wake every other process's waiting store (soon; never blocks, never raises)."""
        if not self._usable or self._pending is not None:
            return
        wait = self._last_ring + _RING_INTERVAL - time.monotonic()
        if wait <= 0:
            self._ring_now()
        else:
            self._pending = asyncio.get_running_loop().call_later(wait, self._ring_now)

    def _ring_now(self) -> None:
        self._pending = None
        self._last_ring = time.monotonic()
        others = self._other_doorbells()
        if not others:
            return
        if self._sender is None:
            try:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError as exc:  # out of file descriptors, say: the others will poll
                log.debug("no ring: %s", exc)
                return
            self._sender.setblocking(False)
        for path in others:
            try:
                self._sender.sendto(b"\x01", str(path))
            except BlockingIOError:
                pass  # its queue is full: it is ringing already
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody listens there any more: a process that ended without closing.
                with contextlib.suppress(OSError):
                    path.unlink()
                    self._directory.rmdir()  # if that was the last one
                self._others_until = 0.0
            except OSError as exc:
                log.debug("ring of %s failed: %s", path, exc)

    def _other_doorbells(self) -> list[Path]:
        # Listed again when the folder changed (a doorbell hung or taken away), so that a
        # store that began to wait a moment ago is rung by the next commit, not a second later.
        now = time.monotonic()
        try:
            changed = os.stat(self._directory).st_mtime_ns
        except OSError:  # no directory: nobody has waited yet
            self._others, self._others_until = [], 0.0
            return self._others
        if now >= self._others_until or changed != self._others_mtime:
            try:
                self._others = [
                    Path(entry.path)
                    for entry in os.scandir(self._directory)
                    if entry.path != str(self._path)
                ]
            except OSError:
                self._others = []
            self._others_mtime = changed
            settled = abs(time.time_ns() - changed) >= _SETTLED_NS
            self._others_until = now + _REFRESH_SECONDS if settled else 0.0
        return self._others

    def _make_directory(self) -> bool:
        """The doorbells' directory, ours alone (another user's would let them ring ours)."""
        try:
            self._directory.parent.mkdir(mode=0o700, exist_ok=True)
            self._directory.mkdir(mode=0o700, exist_ok=True)
            if hasattr(os, "getuid"):
                for folder in (self._directory, self._directory.parent):
                    found = folder.lstat()  # (a symbolic link is refused: it may lead anywhere)
                    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
                        log.warning("%s is not a folder of ours: idle workers poll", folder)
                        return False
        except OSError as exc:
            log.warning("no wake-ups from other processes (%s): idle workers poll", exc)
            return False
        return True

    def _drain(self, on_ring: Callable[[], None]) -> None:
        bell = self._socket
        if bell is None:
            return
        with contextlib.suppress(OSError):  # BlockingIOError once the queue is empty
            while True:
                bell.recv(64)
        on_ring()


def _sweep(root: Path, keep: Path) -> None:
    """Take away the doorbells that processes killed outright left in the folders of other
    databases (none rings them again if their database is not used any more), and the folders
    left empty; ``keep`` is the opening store's own. At most ``_SWEEP_PROBES`` folders and
    doorbells are looked at, each doorbell with a ``connect`` that sends nothing (a live one is
    not woken)."""
    budget = _SWEEP_PROBES
    try:
        with os.scandir(root) as folders:
            for folder in folders:
                if budget <= 0:
                    return
                budget -= 1
                if folder.path != str(keep) and folder.is_dir(follow_symlinks=False):
                    budget = _sweep_folder(folder.path, budget)
    except OSError:
        return


def _sweep_folder(folder: str, budget: int) -> int:
    with contextlib.suppress(OSError), os.scandir(folder) as doorbells:
        for doorbell in doorbells:
            if budget <= 0:
                return budget
            budget -= 1
            if not _answers(doorbell.path):
                with contextlib.suppress(OSError):
                    os.unlink(doorbell.path)
    with contextlib.suppress(OSError):
        # Only if empty now; a store about to bind in it makes it again (see ``open``).
        os.rmdir(folder)
    return budget


def _answers(path: str) -> bool:
    """Whether a socket is bound at ``path`` (a doorbell whose process still runs)."""
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError:
        return True  # cannot tell: leave it
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
    return True
