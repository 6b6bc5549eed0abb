"""Public identifiers: a type prefix and a time-ordered random part (``evt_01J...``).

The random part is 128 bits, a 48-bit millisecond time followed by 80 random bits (the ULID
layout), written in Crockford's base32 alphabet, whose characters sort in the same order as
their values: ids sort by creation time, so cursor pagination can page on the id alone.
A single id is encoded through ``base64.b32encode`` and a translation table, and ids made one
by one in a process strictly increase (see ``new_id``); ids made in bulk (one per delivery of a
published batch, on the publish hot path) are encoded all at once with big-integer shifts and
masks, which costs a fraction of ``b32encode`` (pure Python on 3.11), and only sort by their
millisecond (deliveries are listed by their sequence number, not their id).
"""

from __future__ import annotations

import base64
import os
import threading
import time

__all__ = ["new_id", "new_ids"]

_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def new_id(prefix: str) -> str:
    """A new unique id such as ``dlv_06ABZC1TQ8N5X4HK3W7RMDJY2G``.

    Monotonic within the process (ULID's monotonic mode): an id made in the same millisecond
    as the one before, or after the clock stepped back, is that one's random part plus one, so
    that lists ordered by id ("oldest first") keep the order of creation.
    """
    now = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")
    with _monotonic:
        last_ms, last_random = _last
        if now <= last_ms:
            now, random = last_ms, last_random + 1
            if random >> 80:  # 2**80 ids in one millisecond: borrow the next one
                now, random = now + 1, 0
        _last[:] = (now, random)
    raw = now.to_bytes(6, "big") + random.to_bytes(10, "big")
    # 128 bits make 25.6 base32 characters: the 26th carries the last 3 bits, then padding.
    return prefix + "_" + base64.b32encode(raw).translate(_CROCKFORD)[:26].decode("ascii")


_monotonic = threading.Lock()
_last = [0, 0]  # the millisecond and the random part of the last id made by new_id


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` new ids as ``new_id`` makes them, for one millisecond, in one encoding pass.

    One ``os.urandom`` call for all of them, and the base32 encoding done for the whole batch
    at once: each id's 16 bytes sit at the top of a 32-byte slot of one big integer; 5-bit
    group ``k`` of every slot is shifted into the low bits of the slot's byte ``k`` by one
    shift and one mask over the whole integer (26 of each, not 26 per id), and one
    ``translate`` turns those bytes into Crockford characters. The characters are exactly
    ``new_id``'s (base32 of the 16 bytes, the 26th holding the last 3 bits and 2 zero bits).
    """
    if count <= 0:
        return []
    stamp = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    random = os.urandom(10 * count)
    head = prefix + "_"
    if count < _BULK_FROM:  # the shifts cost more than they save on a few ids
        return [
            head + base64.b32encode(stamp + random[n : n + 10]).translate(_CROCKFORD)[:26].decode()
            for n in range(0, 10 * count, 10)
        ]
    raw = b"".join(stamp + random[n : n + 10] + _SLOT_PAD for n in range(0, 10 * count, 10))
    whole = int.from_bytes(raw, "big")
    groups = 0
    for shift, mask in zip(_SHIFTS, _masks(count), strict=True):
        groups |= (whole >> shift) & mask
    text = groups.to_bytes(32 * count, "big").translate(_FROM_GROUPS).decode("ascii")
    return [head + text[n : n + 26] for n in range(0, 32 * count, 32)]


_BULK_FROM = 4
_SLOT_PAD = bytes(16)
# Group k (bits 5k..5k+4 from the top of a slot) moves from bit 251 - 5k to bit 248 - 8k.
_SHIFTS = tuple(3 + 3 * k for k in range(26))
_FROM_GROUPS = bytes(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"[v & 31] for v in range(256))
_MASKS: dict[int, tuple[int, ...]] = {}


def _masks(count: int) -> tuple[int, ...]:
    """The 26 masks for ``count`` slots (cached: batches come in a few common sizes)."""
    masks = _MASKS.get(count)
    if masks is None:
        slots = int.from_bytes(b"\x01".rjust(32, b"\0") * count, "big")  # bit 0 of every slot
        masks = tuple(slots * (31 << (248 - 8 * k)) for k in range(26))
        if len(_MASKS) >= 64:
            _MASKS.clear()
        _MASKS[count] = masks
    return masks
