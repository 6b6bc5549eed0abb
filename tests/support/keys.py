"""Webhook key ciphertexts in the format of earlier releases (version 1), for upgrade tests."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def v1_ciphertext(master_key: bytes, secret: str) -> bytes:
    """``secret`` encrypted as releases before 0x02 did: one fixed label, no organization."""
    nonce = os.urandom(12)
    sealed = AESGCM(master_key).encrypt(nonce, secret.encode(), b"ascend-webhooks:webhook-key:v1")
    return b"\x01" + nonce + sealed
