"""Worker ids that name their process, so a worker can tell that another one on its machine died.

A delivery leased by a worker killed outright (``kill -9``, an out-of-memory kill) would wait
for its lease to run out (60 s by default) before another worker takes it. A worker id of the
form ``wrk_<machine>_<pid>_<random>`` lets a worker started on the same machine see at once that
the holder's process is gone, and give its leases back (``Store.release_worker``).

``<machine>`` is a short hash of what makes a process id meaningful: the hostname, the kernel's
boot id (``/proc/sys/kernel/random/boot_id``: two machines that share a hostname still differ)
and the pid namespace (the inode of ``/proc/self/ns/pid``: two containers on one kernel that
share a hostname still differ). Only ids with this process's own machine key are ever judged,
and a process counts as dead only when the kernel says no such process exists (or it is a
zombie, which can run no code). Anything else (another machine, a live or reused pid, an id in
another format, this very process) is left to its lease.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WorkerIdentity", "is_dead_here", "machine_key", "new_worker_id", "parse_worker_id"]

_WORKER_ID = re.compile(r"^wrk_([0-9a-f]{12})_([1-9][0-9]{0,9})_([0-9a-f]+)$")


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    machine: str
    pid: int


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


@functools.cache
def machine_key() -> str:
    """12 hex digits naming this (host, boot, pid namespace): where our pids mean something."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:  # not Linux: pids are the host's
        namespace = ""
    parts = (socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), namespace)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def new_worker_id() -> str:
    """A fresh id for a worker of this process: ``wrk_<machine>_<pid>_<random>``."""
    return f"wrk_{machine_key()}_{os.getpid()}_{secrets.token_hex(5)}"


def parse_worker_id(worker_id: str) -> WorkerIdentity | None:
    """The machine key and pid inside a worker id; None for ids of any other form."""
    match = _WORKER_ID.match(worker_id)
    if match is None:
        return None
    return WorkerIdentity(match.group(1), int(match.group(2)))


def is_dead_here(worker_id: str) -> bool:
    """True only if ``worker_id`` is a worker of this machine whose process no longer runs."""
    identity = parse_worker_id(worker_id)
    if identity is None or identity.machine != machine_key():
        return False
    if identity.pid == os.getpid():
        return False  # this process: alive (another worker in it, or a reused pid)
    try:
        os.kill(identity.pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # it exists (another user's), or is no pid of ours at all
    return _is_zombie(identity.pid)


def _is_zombie(pid: int) -> bool:
    """A process that has exited but not been reaped yet: it can make no attempt any more."""
    stat = _read(f"/proc/{pid}/stat")
    # "pid (comm) S ...": the command may contain spaces and parentheses; the state follows
    # the last closing parenthesis.
    _, _, rest = stat.rpartition(")")
    return rest.split()[:1] == ["Z"]
