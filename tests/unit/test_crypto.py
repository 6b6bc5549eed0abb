"""Webhook secrets, the AES-GCM box and the master key (configured or the SQLite key file)."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest

from ascend_webhooks.service.crypto import (
    MasterKeyError,
    SecretBox,
    load_secret_box,
    new_webhook_secret,
    parse_master_key,
    sqlite_path,
)
from ascend_webhooks.service.settings import Settings
from tests.support.keys import v1_ciphertext


def test_secret_is_prefixed_32_random_bytes() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_")
    raw = base64.urlsafe_b64decode(secret[len("whsec_") :] + "=")
    assert len(raw) == 32
    assert new_webhook_secret() != secret


ORG, KEY = "org_01TESTORG", "key_01TESTKEY"
ROW = {"organization_id": ORG, "key_id": KEY}


def test_round_trip_and_ciphertext_hides_the_secret() -> None:
    box = SecretBox.generate()
    secret = new_webhook_secret()
    first, second = box.encrypt(secret, **ROW), box.encrypt(secret, **ROW)
    assert first != second  # a fresh nonce each time
    for ciphertext in (first, second):
        assert ciphertext[:1] == b"\x02"
        assert secret.encode() not in ciphertext
        assert secret[6:].encode() not in ciphertext
        assert box.decrypt(ciphertext, **ROW) == secret


def test_wrong_master_key_or_tampering_is_a_clear_error() -> None:
    ciphertext = SecretBox.generate().encrypt("whsec_x", **ROW)
    with pytest.raises(MasterKeyError, match="master key"):
        SecretBox.generate().decrypt(ciphertext, **ROW)
    box = SecretBox.generate()
    good = box.encrypt("whsec_x", **ROW)
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(MasterKeyError):
        box.decrypt(tampered, **ROW)
    for unknown in (b"\x03" + good[1:], b"\x00" + good[1:], good[:20]):
        with pytest.raises(MasterKeyError, match="format"):
            box.decrypt(unknown, **ROW)
    assert "hidden" in repr(box)


@pytest.mark.parametrize(
    "row",
    [
        {"organization_id": "org_01OTHERORG", "key_id": KEY},
        {"organization_id": ORG, "key_id": "key_01OTHERKEY"},
        {"organization_id": "org_01OTHERORG", "key_id": "key_01OTHERKEY"},
        # Characters moved from one id to the other make another label, too.
        {"organization_id": ORG + KEY[:4], "key_id": KEY[4:]},
    ],
    ids=["other-organization", "other-key", "other-both", "shifted"],
)
def test_a_ciphertext_moved_to_another_row_is_refused(row: dict[str, str]) -> None:
    # Whoever can write to the database but has no master key cannot move a secret to another
    # organization's or key's row (to sign for it, or to bring back a revoked secret).
    box = SecretBox.generate()
    ciphertext = box.encrypt("whsec_theirs", **ROW)
    with pytest.raises(MasterKeyError, match="another organization or key"):
        box.decrypt(ciphertext, **row)
    assert box.decrypt(ciphertext, **ROW) == "whsec_theirs"


def test_a_version_1_ciphertext_is_refused_and_upgraded_for_its_row() -> None:
    master_key = os.urandom(32)
    box = SecretBox(master_key)
    old = v1_ciphertext(master_key, "whsec_old")
    # Earlier releases' format is valid in any row: never trusted to sign.
    with pytest.raises(MasterKeyError, match="earlier release"):
        box.decrypt(old, **ROW)
    upgraded = box.upgrade(old, **ROW)
    assert upgraded is not None
    assert upgraded[:1] == b"\x02"
    assert box.decrypt(upgraded, **ROW) == "whsec_old"
    with pytest.raises(MasterKeyError, match="another organization or key"):
        box.decrypt(upgraded, organization_id="org_01OTHERORG", key_id=KEY)
    assert box.upgrade(upgraded, **ROW) is None  # already current: nothing to do
    with pytest.raises(MasterKeyError, match="master key"):
        SecretBox.generate().upgrade(old, **ROW)


def test_master_key_accepts_standard_and_urlsafe_base64() -> None:
    key = bytes(range(200, 232))
    assert parse_master_key(base64.b64encode(key).decode()) == key
    assert parse_master_key(base64.urlsafe_b64encode(key).decode().rstrip("=")) == key
    with pytest.raises(MasterKeyError, match="32 bytes"):
        parse_master_key(base64.b64encode(b"short").decode())
    with pytest.raises(MasterKeyError, match="not base64"):
        parse_master_key("not base64 at all!")


def test_configured_master_key_is_used(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'a.db'}", master_key=key)
    ciphertext = load_secret_box(settings).encrypt("whsec_abc", **ROW)
    assert load_secret_box(settings).decrypt(ciphertext, **ROW) == "whsec_abc"
    assert not (tmp_path / "a.db.key").exists()  # no key file when one is configured


def test_postgres_needs_a_master_key() -> None:
    with pytest.raises(MasterKeyError, match="ASCEND_WEBHOOKS_MASTER_KEY is required"):
        load_secret_box(Settings(database_url="postgresql:///x"))


def test_sqlite_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sub' / 'x.db'}")
    ciphertext = load_secret_box(settings).encrypt("whsec_abc", **ROW)
    key_file = tmp_path / "sub" / "x.db.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_secret_box(settings).decrypt(ciphertext, **ROW) == "whsec_abc"
    assert [p.name for p in key_file.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_racing_processes_agree_on_one_key_file(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}")
    boxes: list[SecretBox] = []

    def load() -> None:
        boxes.append(load_secret_box(settings))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ciphertext = boxes[0].encrypt("whsec_same", **ROW)
    assert all(box.decrypt(ciphertext, **ROW) == "whsec_same" for box in boxes)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}")
    load_secret_box(settings)
    key_file = tmp_path / "x.db.key"
    key_file.chmod(0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        load_secret_box(settings)


def test_unreadable_or_garbled_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.db.key").mkdir(mode=0o700)
    with pytest.raises(MasterKeyError, match="cannot be read"):
        load_secret_box(Settings(database_url=f"sqlite:///{tmp_path / 'd.db'}"))
    garbled = tmp_path / "g.db.key"
    garbled.write_text("nonsense")
    garbled.chmod(0o600)
    with pytest.raises(MasterKeyError, match="does not hold"):
        load_secret_box(Settings(database_url=f"sqlite:///{tmp_path / 'g.db'}"))


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///./ascend-webhooks.db", "./ascend-webhooks.db"),
        ("sqlite:////var/lib/aw.db", "/var/lib/aw.db"),
        ("sqlite:///data/aw.db?mode=rwc", "data/aw.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("postgresql://localhost/db", None),
    ],
)
def test_sqlite_path(url: str, path: str | None) -> None:
    assert sqlite_path(url) == path


def test_in_memory_database_gets_an_ephemeral_key() -> None:
    box = load_secret_box(Settings(database_url="sqlite:///:memory:"))
    assert box.decrypt(box.encrypt("whsec_m", **ROW), **ROW) == "whsec_m"
