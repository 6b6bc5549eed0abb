"""Webhook keys of an earlier release: ``migrate`` and ``worker`` upgrade them when they start.

Real processes on each backend. The rows are written as earlier releases wrote them (version
1: one label for every key, valid in any row), under the master key the commands are given.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from ascend_webhooks.service.crypto import SecretBox, new_webhook_secret, parse_master_key
from ascend_webhooks.store import Store
from ascend_webhooks.store.models import NewEvent
from tests.support.api import MASTER_KEY
from tests.support.keys import v1_ciphertext
from tests.support.processes import CLI, processes, service_env
from tests.support.receivers import Receiver


async def old_keys(store: Store, organization_id: str, count: int) -> dict[str, str]:
    """``count`` keys written as an earlier release wrote them: their ids and secrets."""
    master_key = parse_master_key(MASTER_KEY)
    keys = {}
    for _ in range(count):
        secret = new_webhook_secret()
        ciphertext = v1_ciphertext(master_key, secret)
        keys[(await store.create_key(organization_id, ciphertext, activate=True)).id] = secret
    return keys


async def migrate(database_url: str) -> str:
    """Run ``ascend-webhooks migrate`` to its end; what it logged."""
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "migrate",
        env=service_env(database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode() + err.decode()


async def test_migrate_upgrades_the_keys_of_an_earlier_release_once(
    store: Store, database_url: str
) -> None:
    org = (await store.create_organization("Acme")).id
    keys = await old_keys(store, org, 3)

    logged = await migrate(database_url)

    assert "upgraded 3 webhook keys" in logged
    assert not any(secret in logged for secret in keys.values())
    box = SecretBox(parse_master_key(MASTER_KEY))
    stored = {k.id: k.secret_ciphertext for k in await store.list_keys(org)}
    for key_id, secret in keys.items():
        assert box.decrypt(stored[key_id], organization_id=org, key_id=key_id) == secret
    # Found nothing to do the next time: the rows stay as they are.
    assert "upgraded" not in await migrate(database_url)
    assert {k.id: k.secret_ciphertext for k in await store.list_keys(org)} == stored


async def test_a_worker_upgrades_the_keys_of_an_earlier_release_and_signs_with_them(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    org = (await store.create_organization("Acme")).id
    ((_, secret),) = (await old_keys(store, org, 1)).items()
    async with processes(tmp_path) as group, Receiver(secret=secret) as receiver:
        await store.create_endpoint(org, receiver.url, None, None)
        body = json.dumps({"id": "evt_old_key", "type": "invoice.paid", "data": {}}).encode()
        event = NewEvent("evt_old_key", "invoice.paid", body, hashlib.sha256(body).digest())
        await store.publish(org, [event])

        worker = await group.worker(service_env(database_url))
        (request,) = await receiver.wait_for_requests(1, within=20)
        assert request.verified, request.verify_error
        assert await worker.stop() == 0

    logged = worker.output()
    assert "upgraded 1 webhook keys" in logged
    assert "cannot decrypt" not in logged
    assert secret not in logged
