"""Public identifiers: a type prefix and a time-ordered random part (``evt_01J...``).

The random part is 128 bits, a 48-bit millisecond time followed by 80 random bits (the ULID
layout), written in Crockford's base32 alphabet, whose characters sort in the same order as
their values: ids sort by creation time, so cursor pagination can page on the id alone.
Encoding goes through ``base64.b32encode`` and a translation table, which is several times
faster than a Python loop over 5-bit groups (ids are made on the publish hot path).
"""

from __future__ import annotations

import base64
import os
import time

__all__ = ["new_id"]

_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def new_id(prefix: str) -> str:
    """A new unique id such as ``dlv_06ABZC1TQ8N5X4HK3W7RMDJY2G``."""
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)
    # 128 bits make 25.6 base32 characters: the 26th carries the last 3 bits, then padding.
    return prefix + "_" + base64.b32encode(raw).translate(_CROCKFORD)[:26].decode("ascii")
