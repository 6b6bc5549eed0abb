"""Public identifiers: a type prefix and a time-ordered random part (``evt_01J...``).

The random part is a ULID (48-bit millisecond time + 80 random bits, Crockford base32), so
ids sort by creation time: cursor pagination can page on the id alone.
"""

from __future__ import annotations

import os
import time

__all__ = ["new_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str) -> str:
    """A new unique id such as ``dlv_01JD0S6W0Q3X5C2M9R7T8V4B1N``."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
