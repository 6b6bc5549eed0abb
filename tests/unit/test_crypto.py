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


def test_secret_is_prefixed_32_random_bytes() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_")
    raw = base64.urlsafe_b64decode(secret[len("whsec_") :] + "=")
    assert len(raw) == 32
    assert new_webhook_secret() != secret


def test_round_trip_and_ciphertext_hides_the_secret() -> None:
    box = SecretBox.generate()
    secret = new_webhook_secret()
    first, second = box.encrypt(secret), box.encrypt(secret)
    assert first != second  # a fresh nonce each time
    for ciphertext in (first, second):
        assert secret.encode() not in ciphertext
        assert secret[6:].encode() not in ciphertext
        assert box.decrypt(ciphertext) == secret


def test_wrong_master_key_or_tampering_is_a_clear_error() -> None:
    ciphertext = SecretBox.generate().encrypt("whsec_x")
    with pytest.raises(MasterKeyError, match="master key"):
        SecretBox.generate().decrypt(ciphertext)
    box = SecretBox.generate()
    good = box.encrypt("whsec_x")
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(MasterKeyError):
        box.decrypt(tampered)
    with pytest.raises(MasterKeyError, match="format"):
        box.decrypt(b"\x02" + good[1:])
    assert "hidden" in repr(box)


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
    ciphertext = load_secret_box(settings).encrypt("whsec_abc")
    assert load_secret_box(settings).decrypt(ciphertext) == "whsec_abc"
    assert not (tmp_path / "a.db.key").exists()  # no key file when one is configured


def test_postgres_needs_a_master_key() -> None:
    with pytest.raises(MasterKeyError, match="ASCEND_WEBHOOKS_MASTER_KEY is required"):
        load_secret_box(Settings(database_url="postgresql:///x"))


def test_sqlite_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sub' / 'x.db'}")
    ciphertext = load_secret_box(settings).encrypt("whsec_abc")
    key_file = tmp_path / "sub" / "x.db.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_secret_box(settings).decrypt(ciphertext) == "whsec_abc"
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
    ciphertext = boxes[0].encrypt("whsec_same")
    assert all(box.decrypt(ciphertext) == "whsec_same" for box in boxes)


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
    assert box.decrypt(box.encrypt("whsec_m")) == "whsec_m"
