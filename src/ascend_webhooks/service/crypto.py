"""Webhook keys encrypted at rest: AES-256-GCM under one master key.

The master key comes from ``ASCEND_WEBHOOKS_MASTER_KEY`` (32 bytes, base64 or base64url). On
the embedded SQLite default, when no master key is configured, one is generated beside the
database as ``<database>.key`` (mode 0600, created atomically so that a server and a worker
starting together agree on one key). PostgreSQL deployments run on many machines, so there the
key must be configured explicitly.

A ciphertext is ``b"\\x02" + nonce(12) + AES-GCM(secret)``, whose associated data names the
organization and the key it was issued for: moved to another key's row (by anyone who can write
to the database but has no master key), it no longer decrypts, so it can neither sign another
organization's deliveries nor bring back a revoked secret.

Earlier releases wrote version 1, under one fixed label that names neither: valid in any row.
:func:`upgrade_stored_keys` re-encrypts those rows in place when ``serve``, ``worker`` and
``migrate`` start, and :meth:`SecretBox.decrypt` refuses them rather than sign with one. A key
issued by a process of the earlier release during a rolling upgrade is therefore a
``key_error`` until the next start of a new process upgrades it (production.md says to run
``migrate`` again once the roll is done). The upgrade at start trusts the version 1 rows it
finds; a later release that drops version 1 ends that too.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..store.base import InvalidCursorError, Store
from ..store.models import WebhookKey
from .settings import Settings

__all__ = [
    "SECRET_PREFIX",
    "CursorList",
    "MasterKeyError",
    "SecretBox",
    "load_secret_box",
    "new_webhook_secret",
    "sqlite_path",
    "upgrade_stored_keys",
]

log = logging.getLogger("ascend_webhooks.service")

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
_VERSION = b"\x02"
_NONCE_BYTES = 12
_MIN_LENGTH = 1 + _NONCE_BYTES + 16  # version, nonce, tag
#: Version 1, written by earlier releases: one label for every key, bound to no row.
_V1_VERSION = b"\x01"
_V1_AAD = b"ascend-webhooks:webhook-key:v1"

#: The lists whose cursors are sealed; a cursor opens only in the list that handed it out.
CursorList = Literal["events", "deliveries"]


class MasterKeyError(RuntimeError):
    """The master key is missing, malformed, unreadable, too widely readable, or wrong."""


def new_webhook_secret() -> str:
    """A fresh webhook secret: ``whsec_`` + 32 random bytes, base64url without padding.

    Receivers use the whole string, prefix included, as the HMAC key.
    """
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class SecretBox:
    """Encrypts and decrypts webhook secrets with the master key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise MasterKeyError("the master key must be exactly 32 bytes (AES-256)")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:  # never show the key
        return "SecretBox(<hidden>)"

    @classmethod
    def generate(cls) -> SecretBox:
        """A box with a fresh random key (tests, in-memory databases)."""
        return cls(AESGCM.generate_key(bit_length=256))

    def encrypt(self, secret: str, *, organization_id: str, key_id: str) -> bytes:
        """The ciphertext to store for ``secret`` as key ``key_id`` of ``organization_id``."""
        nonce = os.urandom(_NONCE_BYTES)
        aad = _key_aad(organization_id, key_id)
        return _VERSION + nonce + self._aead.encrypt(nonce, secret.encode("utf-8"), aad)

    def decrypt(self, ciphertext: bytes, *, organization_id: str, key_id: str) -> str:
        """The secret back; MasterKeyError unless it was encrypted with this master key for
        this organization and key (a ciphertext moved to another row is refused)."""
        if ciphertext[:1] == _V1_VERSION:
            # Valid in any row, so never trusted to sign: upgrade_stored_keys re-encrypts it.
            raise MasterKeyError(
                "stored webhook key is in an earlier release's format, bound to no "
                "organization: serve, worker and migrate upgrade it when they start"
            )
        return self._open(ciphertext, _key_aad(organization_id, key_id))

    def upgrade(self, ciphertext: bytes, *, organization_id: str, key_id: str) -> bytes | None:
        """A version 1 ciphertext re-encrypted for this organization and key; None if it is
        not version 1. MasterKeyError if it does not decrypt with this master key."""
        if ciphertext[:1] != _V1_VERSION:
            return None
        secret = self._open(ciphertext, _V1_AAD)
        return self.encrypt(secret, organization_id=organization_id, key_id=key_id)

    def _open(self, ciphertext: bytes, aad: bytes) -> str:
        if len(ciphertext) < _MIN_LENGTH or ciphertext[:1] not in (_VERSION, _V1_VERSION):
            raise MasterKeyError("stored webhook key has an unknown format")
        nonce = ciphertext[1 : 1 + _NONCE_BYTES]
        try:
            plain = self._aead.decrypt(nonce, ciphertext[1 + _NONCE_BYTES :], aad)
        except InvalidTag:
            raise MasterKeyError(
                "a stored webhook key cannot be decrypted: the master key is not the one it "
                "was encrypted with, or it was encrypted for another organization or key"
            ) from None
        return plain.decode("utf-8")

    def seal_cursor(
        self, organization_id: str, cursor: str | None, *, listing: CursorList
    ) -> str | None:
        """A list cursor made opaque to the organization and the list it is for.

        Events and deliveries are paged by sequence numbers that every organization's rows
        share: as plain numbers, the gap between two of an organization's pages counts what
        the others published meanwhile. Sealed, a cursor says nothing, and it opens only for
        the organization and the list it was handed out by (:meth:`open_cursor`): an event's
        seq is no position among deliveries, nor the reverse.
        """
        if cursor is None:
            return None
        nonce = os.urandom(_NONCE_BYTES)
        aad = _cursor_aad(organization_id, listing)
        sealed = self._aead.encrypt(nonce, cursor.encode("utf-8"), aad)
        return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def open_cursor(
        self, organization_id: str, cursor: str | None, *, listing: CursorList
    ) -> str | None:
        """The cursor :meth:`seal_cursor` sealed for this organization and list;
        InvalidCursorError for anything else (another organization's or list's, altered,
        made up)."""
        if cursor is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            plain = self._aead.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _cursor_aad(organization_id, listing)
            )
            return plain.decode("utf-8")
        except (ValueError, InvalidTag):  # (binascii.Error and UnicodeError are ValueErrors)
            raise InvalidCursorError(cursor) from None


def _key_aad(organization_id: str, key_id: str) -> bytes:
    # NUL-separated, and ids (made by new_id) hold no NUL: no two keys share a label.
    if "\0" in organization_id or "\0" in key_id:
        raise MasterKeyError("a webhook key's organization or key id holds a NUL character")
    return b"\0".join(
        (b"ascend-webhooks:webhook-key:v2", organization_id.encode(), key_id.encode())
    )


async def upgrade_stored_keys(store: Store, box: SecretBox) -> int:
    """Re-encrypt every webhook key stored in the version 1 format for its organization and
    key, in place; how many were. Run by ``serve``, ``worker`` and ``migrate`` at start.

    One transaction; each row is replaced only if its ciphertext is still the one read, so
    processes starting together upgrade each row once, and a later start finds nothing to do.
    A row that does not decrypt with this master key is left as it is (it could not sign
    anyway) and tried again at the next start.
    """
    undecryptable: set[str] = set()

    def upgrade(key: WebhookKey) -> bytes | None:
        try:
            return box.upgrade(
                key.secret_ciphertext, organization_id=key.organization_id, key_id=key.id
            )
        except MasterKeyError:
            undecryptable.add(key.id)
            return None

    upgraded = await store.rewrite_key_ciphertexts(_V1_VERSION, upgrade)
    if upgraded:
        log.info("upgraded %d webhook keys to ciphertexts bound to their organization", upgraded)
    if undecryptable:
        named = sorted(undecryptable)
        log.warning(
            "%d webhook keys of an earlier release do not decrypt with this master key and "
            "stay as they are: %s",
            len(named),
            ", ".join(named[:10]) + (", …" if len(named) > 10 else ""),
        )
    return upgraded


def _cursor_aad(organization_id: str, listing: CursorList) -> bytes:
    # v2: v1 named the organization only, so one list's cursor opened in the other's.
    return f"ascend-webhooks:cursor:v2:{listing}:{organization_id}".encode()


def parse_master_key(text: str) -> bytes:
    """Decode a configured master key (standard or URL-safe base64 of 32 bytes)."""
    cleaned = text.strip()
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(
            "ASCEND_WEBHOOKS_MASTER_KEY is not base64; generate one with "
            '`python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"`'
        ) from None
    if len(key) != 32:
        raise MasterKeyError(
            f"ASCEND_WEBHOOKS_MASTER_KEY decodes to {len(key)} bytes; it must be 32 bytes"
        )
    return key


def sqlite_path(database_url: str) -> str | None:
    """The file path of a ``sqlite:///PATH`` URL, ``":memory:"`` or None for other URLs."""
    if not database_url.startswith("sqlite:"):
        return None
    rest = database_url[len("sqlite:") :]
    rest = rest.split("?", 1)[0]
    if rest.startswith("///"):
        rest = rest[3:]
    elif rest.startswith("//"):
        rest = rest[2:]
    return rest or ":memory:"


def load_secret_box(settings: Settings) -> SecretBox:
    """The box for these settings: the configured master key, else the SQLite key file."""
    if settings.master_key is not None:
        return SecretBox(parse_master_key(settings.master_key))
    path = sqlite_path(settings.database_url)
    if path is None:
        raise MasterKeyError(
            "ASCEND_WEBHOOKS_MASTER_KEY is required with PostgreSQL: every server and worker "
            "must share one key (32 random bytes, base64)"
        )
    if path == ":memory:":
        return SecretBox.generate()
    return SecretBox(_key_file(Path(path + ".key")))


def _key_file(path: Path) -> bytes:
    """Read the key file, creating it first (atomically, mode 0600) if it does not exist."""
    if not path.exists():
        _create_key_file(path)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise MasterKeyError(
                f"master key file {path} is accessible to other users (mode "
                f"{stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        text = path.read_text("ascii")
    except OSError as exc:
        raise MasterKeyError(f"master key file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise MasterKeyError(f"master key file {path} is not base64 text") from None
    try:
        return parse_master_key(text)
    except MasterKeyError:
        raise MasterKeyError(f"master key file {path} does not hold a base64 32-byte key") from None


def _create_key_file(path: Path) -> None:
    # Write a private temporary file, then link it into place: the key file either does not
    # exist or is complete, and when two processes race, the first link wins for both.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    key = base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError as exc:
        raise MasterKeyError(f"cannot create master key file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
