"""API tokens: generated at random, shown once, kept only as a SHA-256 hash.

A token carries 256 random bits, so a plain SHA-256 (no salt, no slow KDF) is enough: there is
nothing to brute-force, and a fast hash lets the store look a token up by its hash in one
indexed query.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["TOKEN_PREFIX", "hash_token", "new_token", "same_hash"]

TOKEN_PREFIX = "aw_"  # noqa: S105 (a prefix, not a secret)


def new_token() -> str:
    """A fresh API token such as ``aw_3q2…`` (32 random bytes, URL-safe base64)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    """The SHA-256 digest under which a token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def same_hash(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two token hashes."""
    return hmac.compare_digest(a, b)
