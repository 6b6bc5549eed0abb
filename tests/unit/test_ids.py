"""Public ids are unique, prefixed, fixed-length and sort by creation time."""

from __future__ import annotations

import time

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
