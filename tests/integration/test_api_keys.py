"""Webhook keys: issued once, encrypted at rest, rotated without a gap, never logged."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ascend_webhooks import WebhookError, verify
from ascend_webhooks.service.crypto import (
    MasterKeyError,
    SecretBox,
    new_webhook_secret,
    parse_master_key,
)
from ascend_webhooks.service.schemas import KeyCreated, KeyList, KeyOut
from ascend_webhooks.store import Store
from tests.support.api import (
    MASTER_KEY,
    Api,
    api_settings,
    assert_problem,
    raw_database_bytes,
    running_api,
)
from tests.support.keys import v1_ciphertext
from tests.support.receivers import Receiver, RecordedRequest


@pytest.fixture
async def api(store: Store, database_url: str) -> AsyncIterator[Api]:
    async with running_api(api_settings(database_url), store=store) as running:
        yield running


async def test_first_key_signs_at_once_later_keys_wait(api: Api, store: Store) -> None:
    org = await api.organization()
    path = f"/v1/organizations/{org}/keys"
    first = KeyCreated.model_validate((await api.call("POST", path, expect=201)).json())
    assert re.fullmatch(r"whsec_[A-Za-z0-9_-]{43}", first.secret)
    assert first.active is True
    assert first.activated_at is not None
    second = KeyCreated.model_validate((await api.call("POST", path, expect=201)).json())
    assert second.active is False
    assert second.activated_at is None
    assert second.secret != first.secret

    listed = await api.call("GET", path, expect=200)
    assert first.secret not in listed.text
    assert second.secret not in listed.text
    keys = KeyList.model_validate(listed.json())
    assert [(k.id, k.active) for k in keys.data] == [(first.id, True), (second.id, False)]
    # The store holds ciphertexts that decrypt to the secrets shown once, in their own rows.
    box = SecretBox(parse_master_key(MASTER_KEY))
    stored = {k.id: k.secret_ciphertext for k in await store.list_keys(org)}
    assert box.decrypt(stored[first.id], organization_id=org, key_id=first.id) == first.secret
    assert first.secret.encode() not in stored[first.id]
    with pytest.raises(MasterKeyError):
        box.decrypt(stored[first.id], organization_id=org, key_id=second.id)
    signing = await store.signing_keys([org])
    assert signing[org].id == first.id


async def test_rotation_activate_then_revoke(api: Api, store: Store) -> None:
    org = await api.organization()
    path = f"/v1/organizations/{org}/keys"
    one = (await api.call("POST", path, expect=201)).json()["id"]
    two = (await api.call("POST", path, expect=201)).json()["id"]

    activated = KeyOut.model_validate(
        (await api.call("POST", f"{path}/{two}/activate", expect=200)).json()
    )
    assert activated.active is True
    assert (await store.signing_keys([org]))[org].id == two
    again = await api.call("POST", f"{path}/{two}/activate", expect=200)  # idempotent
    assert again.json()["active"] is True

    revoked = KeyOut.model_validate((await api.call("DELETE", f"{path}/{one}", expect=200)).json())
    assert revoked.revoked_at is not None
    assert revoked.active is False
    assert (await api.call("DELETE", f"{path}/{one}", expect=200)).json()["revoked_at"]
    problem = assert_problem(await api.call("POST", f"{path}/{one}/activate"), 409)
    assert "revoked" in problem["detail"]

    # The signing key cannot go while it is the only active one.
    problem = assert_problem(await api.call("DELETE", f"{path}/{two}"), 409)
    assert "only active key" in problem["detail"]
    assert (await store.signing_keys([org]))[org].id == two

    assert_problem(await api.call("POST", f"{path}/key_nope/activate"), 404)
    assert_problem(await api.call("DELETE", f"{path}/key_nope"), 404)


async def test_a_standby_key_can_be_revoked(api: Api) -> None:
    org = await api.organization()
    path = f"/v1/organizations/{org}/keys"
    await api.call("POST", path, expect=201)
    standby = (await api.call("POST", path, expect=201)).json()["id"]
    await api.call("DELETE", f"{path}/{standby}", expect=200)
    assert_problem(await api.call("POST", f"{path}/{standby}/activate"), 409)


async def test_secrets_are_encrypted_at_rest_and_never_logged(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = api_settings(sqlite_url, master_key=None)  # the embedded default: a key file
    async with running_api(settings) as api:
        org = await api.organization()
        secrets = [
            (await api.call("POST", f"/v1/organizations/{org}/keys", expect=201)).json()["secret"]
            for _ in range(2)
        ]
        keys = (await api.call("GET", f"/v1/organizations/{org}/keys", expect=200)).json()
        second = keys["data"][1]["id"]
        await api.call("POST", f"/v1/organizations/{org}/keys/{second}/activate", expect=200)
        await api.call("DELETE", f"/v1/organizations/{org}/keys/{keys['data'][0]['id']}")
    raw = raw_database_bytes(tmp_path)
    assert raw  # the database is on disk
    for secret in secrets:
        assert secret.encode() not in raw
        assert secret[len("whsec_") :].encode() not in raw
        assert secret not in caplog.text
    assert "issued webhook key" in caplog.text  # the log speaks of keys, by id only


async def _deliver(api: Api, org: str, receiver: Receiver, event_id: str) -> RecordedRequest:
    """Publish one event and wait for its (single) delivery to succeed."""
    event = (await api.publish(org, id=event_id, data={"n": event_id})).json()
    (summary,) = event["deliveries"]
    path = f"/v1/organizations/{org}/deliveries/{summary['id']}"
    for _ in range(200):
        delivery = (await api.call("GET", path, expect=200)).json()
        if delivery["status"] != "pending":
            break
        await asyncio.sleep(0.025)
    assert delivery["status"] == "succeeded", delivery
    assert delivery["attempt_count"] == 1  # no attempt failed
    (request,) = [r for r in receiver.requests if r.event is not None and r.event.id == event_id]
    return request


async def test_rotation_loses_no_delivery(
    store: Store, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = api_settings(database_url, retry_schedule=(0.05,))
    async with (
        running_api(settings, store=store, run_delivery=True) as api,
        Receiver() as receiver,
    ):
        org = await api.organization()
        keys = f"/v1/organizations/{org}/keys"
        one = (await api.call("POST", keys, expect=201)).json()
        await api.endpoint(org, receiver.url)
        receiver.secret = one["secret"]
        signed_by: list[str] = []

        async def deliver(event_id: str) -> None:
            request = await _deliver(api, org, receiver, event_id)
            assert request.verified, request.verify_error
            header = request.header("X-Ascend-Signature") or ""
            assert header.count("v1=") == 1  # exactly one signature, always
            for name, secret in (("one", one["secret"]), ("two", two.get("secret", ""))):
                if secret:
                    try:
                        verify(request.body, request.headers, secret)
                    except WebhookError:
                        continue
                    signed_by.append(name)

        two: dict[str, str] = {}
        await deliver("before")
        # 1. Issue key 2: it does not sign yet.
        two = (await api.call("POST", keys, expect=201)).json()
        await deliver("issued")
        # 2. The receiver accepts both secrets.
        receiver.secret = [one["secret"], two["secret"]]
        await deliver("both")
        # 3. Activate key 2; deliveries move to it (workers cache keys for a moment).
        await api.call("POST", f"{keys}/{two['id']}/activate", expect=200)
        for n in range(200):
            await deliver(f"moving-{n}")
            if signed_by[-1] == "two":
                break
        # 4. The receiver drops key 1, and key 1 is revoked.
        receiver.secret = two["secret"]
        await api.call("DELETE", f"{keys}/{one['id']}", expect=200)
        await deliver("after")
        assert signed_by[:3] == ["one", "one", "one"]
        assert signed_by[-2:] == ["two", "two"]
        assert all(r.verified for r in receiver.requests)
    for secret in (one["secret"], two["secret"]):
        assert secret not in caplog.text


async def test_keys_of_an_earlier_release_are_upgraded_at_start_and_still_sign(
    store: Store, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Rows as an earlier release wrote them: one label for every key, valid in any row.
    master_key = parse_master_key(MASTER_KEY)
    org = (await store.create_organization("Acme")).id
    secret = new_webhook_secret()
    revoked = await store.create_key(org, v1_ciphertext(master_key, "whsec_gone"), activate=True)
    key = await store.create_key(org, v1_ciphertext(master_key, secret), activate=True)
    await store.revoke_key(org, revoked.id)
    caplog.set_level(logging.INFO)
    settings = api_settings(database_url, retry_schedule=(0.05,))
    async with (
        running_api(settings, store=store, run_delivery=True) as api,
        Receiver(secret=secret) as receiver,
    ):
        # Upgraded before the worker started: every row, the revoked one too, is bound to
        # its organization and key, and the old secret still signs.
        box = SecretBox(master_key)
        stored = {k.id: k.secret_ciphertext for k in await store.list_keys(org)}
        assert {c[:1] for c in stored.values()} == {b"\x02"}
        assert box.decrypt(stored[key.id], organization_id=org, key_id=key.id) == secret
        assert box.decrypt(stored[revoked.id], organization_id=org, key_id=revoked.id) == (
            "whsec_gone"
        )
        await api.endpoint(org, receiver.url)
        request = await _deliver(api, org, receiver, "after-upgrade")
        assert request.verified, request.verify_error
    assert "upgraded 2 webhook keys" in caplog.text
    assert secret not in caplog.text

    caplog.clear()  # the next start finds nothing left to upgrade
    async with running_api(settings, store=store):
        pass
    assert "upgraded" not in caplog.text
    assert {k.id: k.secret_ciphertext for k in await store.list_keys(org)} == stored


async def test_a_key_of_an_earlier_release_under_another_master_key_is_left_as_it_is(
    store: Store, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Started with the wrong master key: nothing is rewritten, the next start tries again.
    org = (await store.create_organization("Acme")).id
    old = v1_ciphertext(bytes(32), "whsec_elsewhere")
    key = await store.create_key(org, old, activate=True)
    caplog.set_level(logging.INFO)
    async with running_api(api_settings(database_url), store=store):
        pass
    assert [k.secret_ciphertext for k in await store.list_keys(org)] == [old]
    assert f"do not decrypt with this master key and stay as they are: {key.id}" in caplog.text
    assert "upgraded" not in caplog.text
    assert "whsec_elsewhere" not in caplog.text


async def test_revokes_at_once_leave_a_key_that_signs(api: Api, store: Store) -> None:
    # Each organization has two active keys, both revoked at once: one of the two calls must
    # see the other key revoked and refuse. Several organizations, for more interleavings.
    orgs = [await api.organization(f"org-{n}") for n in range(4)]
    pairs: list[tuple[str, str]] = []
    for org in orgs:
        path = f"/v1/organizations/{org}/keys"
        one = (await api.call("POST", path, expect=201)).json()["id"]
        two = (await api.call("POST", path, expect=201)).json()["id"]
        await api.call("POST", f"{path}/{two}/activate", expect=200)
        pairs.append((one, two))
    answers = await asyncio.gather(
        *(
            api.call("DELETE", f"/v1/organizations/{org}/keys/{key}")
            for org, pair in zip(orgs, pairs, strict=True)
            for key in pair
        )
    )
    for n, org in enumerate(orgs):
        first, second = answers[2 * n : 2 * n + 2]
        assert sorted([first.status_code, second.status_code]) == [200, 409]
        refused = first if first.status_code == 409 else second
        assert assert_problem(refused, 409)["type"].endswith("last-active-key")
        keys = KeyList.model_validate(
            (await api.call("GET", f"/v1/organizations/{org}/keys", expect=200)).json()
        )
        assert [k.active for k in keys.data].count(True) == 1
        assert org in await store.signing_keys([org])


async def test_first_keys_issued_at_once_activate_only_one(api: Api, store: Store) -> None:
    # Several first keys of each organization at once: one signs, the others wait for
    # `activate`. Several organizations, for more interleavings.
    orgs = [await api.organization(f"org-{n}") for n in range(4)]
    answers = await asyncio.gather(
        *(api.call("POST", f"/v1/organizations/{org}/keys", expect=201) for org in orgs * 5)
    )
    issued = [KeyCreated.model_validate(answer.json()) for answer in answers]
    for org in orgs:
        mine = [k for k in issued if k.organization_id == org]
        assert [k.active for k in mine].count(True) == 1
        assert [k.activated_at is not None for k in mine].count(True) == 1
        (signing,) = [k.id for k in mine if k.active]
        # The answers agree with what was stored.
        path = f"/v1/organizations/{org}/keys"
        listed = KeyList.model_validate((await api.call("GET", path, expect=200)).json())
        assert {k.id: k.active for k in listed.data} == {k.id: k.active for k in mine}
        stored = await store.list_keys(org)
        assert [k.id for k in stored if k.activated_at is not None] == [signing]
        assert (await store.signing_keys([org]))[org].id == signing
