"""Worker ids name their machine and process; only a dead process of this machine is dead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from ascend_webhooks.delivery.identity import (
    is_dead_here,
    machine_key,
    new_worker_id,
    parse_worker_id,
)

_PRINT_KEY = "from ascend_webhooks.delivery.identity import machine_key; print(machine_key())"


def test_a_worker_id_names_this_machine_and_process() -> None:
    worker_id = new_worker_id()
    identity = parse_worker_id(worker_id)
    assert identity is not None
    assert identity.machine == machine_key()
    assert identity.pid == os.getpid()
    assert new_worker_id() != worker_id  # two workers of one process differ
    assert not is_dead_here(worker_id)  # this process


def test_the_machine_key_is_the_same_for_every_process_of_the_machine() -> None:
    other = subprocess.run(
        [sys.executable, "-c", _PRINT_KEY], capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == machine_key()


def test_another_pid_namespace_is_another_machine() -> None:
    """Two containers may share a hostname: their pids must not be confused."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) here")
    inside = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-c", _PRINT_KEY],
        capture_output=True,
        text=True,
        check=False,
    )
    if inside.returncode != 0:
        pytest.skip(f"cannot make a pid namespace here: {inside.stderr.strip()}")
    assert inside.stdout.strip() != machine_key()


def test_a_process_that_is_gone_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    worker_id = f"wrk_{machine_key()}_{child.pid}_ab12"
    child.wait()  # exited and reaped: no such process any more
    assert is_dead_here(worker_id)


def test_a_zombie_is_dead_and_a_live_process_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    worker_id = f"wrk_{machine_key()}_{child.pid}_ab12"
    try:
        assert not is_dead_here(worker_id)
        assert child.stdin is not None
        child.stdin.close()  # it exits; not reaped yet, so a zombie
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # wait without reaping
        assert is_dead_here(worker_id)
    finally:
        child.wait()
    assert is_dead_here(worker_id)


def test_ids_of_other_machines_or_forms_are_never_judged() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    other_machine = "0" * 12 if machine_key() != "0" * 12 else "1" * 12
    assert not is_dead_here(f"wrk_{other_machine}_{child.pid}_ab12")
    for odd in (
        "w1",
        "wrk_06ABZC1TQ8N5X4HK3W7RMDJY2G",  # the former random ids
        f"wrk_{machine_key()}_0_ab12",  # pid 0 would signal our own process group
        f"wrk_{machine_key()}_-1_ab12",
        f"wrk_{machine_key()}_99999999999_ab12",
        f"wrk_{machine_key()}_{child.pid}",
    ):
        assert parse_worker_id(odd) is None or not is_dead_here(odd), odd
    assert not is_dead_here(f"wrk_{machine_key()}_9999999999_ab12")  # not a pid at all
