"""A worker gives back at once the leases of dead processes of its own machine, and no others.

Runs on each backend (the ``store`` fixture). The lease holders are real processes: one that
has exited, one that still runs; and an id of another machine.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from ascend_webhooks.delivery.identity import machine_key, parse_worker_id
from ascend_webhooks.delivery.worker import Worker
from ascend_webhooks.store import Store
from ascend_webhooks.store.models import DeliveryStatus
from tests.integration.test_worker import (
    decrypt,
    make_settings,
    new_organization,
    publish,
    running,
    wait_terminal,
)
from tests.support.receivers import ReceiverFactory, receivers

__all__ = ["receivers"]  # the fixture

LEASE = 60.0  # the default: nothing here may wait for it


async def test_leases_of_a_dead_process_here_are_released_at_once(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret="whsec_dead_leases")
    org = await new_organization(store, "whsec_dead_leases")
    await store.create_endpoint(org, receiver.url, None, None)
    await publish(store, org, count=3)

    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()  # exited and reaped: its pid names no process now
    alive = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; sys.stdin.read()", stdin=asyncio.subprocess.PIPE
    )
    try:
        here = machine_key()
        elsewhere = "0" * 12 if here != "0" * 12 else "1" * 12
        dead_id = f"wrk_{here}_{gone.pid}_dead01"
        live_id = f"wrk_{here}_{alive.pid}_live01"
        remote_id = f"wrk_{elsewhere}_{gone.pid}_far001"  # same pid, another machine
        (dead,) = await store.claim(dead_id, 1, LEASE)
        (live,) = await store.claim(live_id, 1, LEASE)
        (remote,) = await store.claim(remote_id, 1, LEASE)
        assert sorted(await store.lease_holders()) == sorted([dead_id, live_id, remote_id])

        worker = Worker(store, make_settings(lease_seconds=LEASE), decrypt)
        started = time.monotonic()
        async with running(worker):
            (done,) = await wait_terminal(store, org, [dead.id], within=5)
            took = time.monotonic() - started
            await asyncio.sleep(0.5)  # time enough to (wrongly) take the others too
            for kept in (live, remote):
                delivery = await store.get_delivery(org, kept.id)
                assert delivery.status is DeliveryStatus.PENDING
                assert delivery.attempts == ()
            assert sorted(await store.lease_holders()) == sorted([live_id, remote_id])
            assert await worker.release_dead_workers() == 0
        assert done.status is DeliveryStatus.SUCCEEDED
        assert [a.number for a in done.attempts] == [1]  # the lost attempt left no record
        assert took < 3, f"the dead worker's delivery took {took:.1f}s"
        assert len(receiver.requests) == 1
        assert receiver.requests[0].verified
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        await alive.wait()


def test_a_worker_id_names_its_process(store: Store) -> None:
    worker = Worker(store, make_settings(), decrypt)
    identity = parse_worker_id(worker.worker_id)
    assert identity is not None
    assert (identity.machine, identity.pid) == (machine_key(), os.getpid())
