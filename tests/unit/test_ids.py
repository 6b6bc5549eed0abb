"""Public ids are unique, prefixed, fixed-length and sort by creation time."""

from __future__ import annotations

import time

import pytest

from ascend_webhooks.ids import new_id, new_ids

_ALPHABET = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def test_shape() -> None:
    value = new_id("evt")
    prefix, _, body = value.partition("_")
    assert prefix == "evt"
    assert len(body) == 26
    assert set(body) <= _ALPHABET


def test_unique() -> None:
    ids = {new_id("dlv") for _ in range(20_000)}
    assert len(ids) == 20_000


def test_sorted_by_creation_time() -> None:
    earlier = [new_id("x") for _ in range(50)]
    time.sleep(0.002)
    later = [new_id("x") for _ in range(50)]
    assert max(earlier) < min(later)


def test_time_prefix_matches_the_clock() -> None:
    before = time.time_ns() // 1_000_000
    body = new_id("x")[2:]
    after = time.time_ns() // 1_000_000
    # The first 48 bits are the creation time in milliseconds.
    value = 0
    for char in body:
        value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
    millis = value >> (26 * 5 - 48)
    assert before <= millis <= after


def test_ids_made_in_bulk_are_shaped_and_timed_like_single_ones() -> None:
    # The publish front names a batch's events without ids with one new_ids call.
    before = time.time_ns() // 1_000_000
    many = new_ids("evt", 2_000)
    after = time.time_ns() // 1_000_000
    assert len(set(many)) == 2_000
    one = new_id("evt")
    for value in many:
        prefix, _, body = value.partition("_")
        assert prefix == "evt"
        assert len(value) == len(one)
        assert set(body) <= _ALPHABET
        millis = 0
        for char in body:
            millis = millis * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
        assert before <= millis >> (26 * 5 - 48) <= after
    assert new_ids("evt", 0) == []


def test_bulk_encoding_gives_exactly_the_ids_base32_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    # new_ids encodes large batches with big-integer shifts instead of base64.b32encode; the
    # characters must be the same, bit for bit, on both sides of the switch and at the extremes.
    import base64
    import os
    import random

    from ascend_webhooks import ids

    crockford = bytes.maketrans(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    )
    rng = random.Random(7)  # noqa: S311 - reproducible test data, not secrets
    for count in (1, 3, 4, 5, 64, 1_000):
        for extreme in (False, True):
            raw = b"\xff" * (10 * count) if extreme else rng.randbytes(10 * count)
            millis = (1 << 48) - 1 if extreme else rng.getrandbits(48)
            monkeypatch.setattr(os, "urandom", lambda n, raw=raw: raw[:n])
            monkeypatch.setattr(time, "time_ns", lambda millis=millis: millis * 1_000_000)
            stamp = millis.to_bytes(6, "big")
            expected = [
                "dlv_"
                + base64.b32encode(stamp + raw[n : n + 10]).translate(crockford).decode()[:26]
                for n in range(0, 10 * count, 10)
            ]
            assert ids.new_ids("dlv", count) == expected
            monkeypatch.undo()


def test_ids_made_one_by_one_strictly_increase_within_a_millisecond() -> None:
    # Organizations and endpoints are listed oldest first by id: two made in the same
    # millisecond once came back in either order.
    ids = [new_id("org") for _ in range(5_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_keep_increasing_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = new_id("org")
    monkeypatch.setattr(time, "time_ns", lambda: 1_000_000_000)  # 1970: far behind
    assert first < new_id("org") < new_id("org")
