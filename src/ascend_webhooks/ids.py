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

__all__ = ["new_id", "new_ids"]

_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def new_id(prefix: str) -> str:
    """A new unique id such as ``dlv_06ABZC1TQ8N5X4HK3W7RMDJY2G``."""
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)
    # 128 bits make 25.6 base32 characters: the 26th carries the last 3 bits, then padding.
    return prefix + "_" + base64.b32encode(raw).translate(_CROCKFORD)[:26].decode("ascii")


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` new ids as ``new_id`` makes them, for one millisecond, in one encoding pass.

    One ``os.urandom`` call and one ``b32encode`` for all of them: the publish of a batch makes
    one delivery id per event and endpoint. Each id's 16 bytes are padded to 20 (a multiple of
    5 bytes, so base32 groups never straddle two ids); its first 26 characters are ``new_id``'s.
    """
    stamp = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    random = os.urandom(10 * count)
    raw = b"".join(stamp + random[n : n + 10] + b"\0\0\0\0" for n in range(0, 10 * count, 10))
    text = base64.b32encode(raw).translate(_CROCKFORD).decode("ascii")
    head = prefix + "_"
    return [head + text[n : n + 26] for n in range(0, 32 * count, 32)]
