"""Checks every backend applies to a caller's input before touching its database."""

from __future__ import annotations

from collections.abc import Sequence

from .base import StoreError

__all__ = ["endpoint_changes", "key_in_flight"]

_ENDPOINT_FIELDS = frozenset({"url", "event_types", "description", "enabled"})


def endpoint_changes(changes: dict[str, object]) -> dict[str, object]:
    """Validate ``Store.update_endpoint`` changes; StoreError names the mistake.

    Values come back as Python values (``event_types`` a list or None, ``enabled`` a bool);
    each backend encodes them for its columns.
    """
    unknown = set(changes) - _ENDPOINT_FIELDS
    if unknown:
        raise StoreError(f"cannot change {sorted(unknown)} of an endpoint")
    values: dict[str, object] = {}
    if "url" in changes:
        if not isinstance(changes["url"], str):
            raise StoreError("url must be a string")
        values["url"] = changes["url"]
    if "event_types" in changes:
        types = changes["event_types"]
        if types is not None and (
            isinstance(types, str | bytes)
            or not isinstance(types, Sequence)
            or not all(isinstance(t, str) for t in types)
        ):
            raise StoreError("event_types must be a list of strings or None")
        values["event_types"] = None if types is None else list(types)
    if "description" in changes:
        if changes["description"] is not None and not isinstance(changes["description"], str):
            raise StoreError("description must be a string or None")
        values["description"] = changes["description"]
    if "enabled" in changes:
        if not isinstance(changes["enabled"], bool):
            raise StoreError("enabled must be true or false")
        values["enabled"] = changes["enabled"]
    return values


def key_in_flight(delivery_id: str) -> StoreError:
    """Why a failed delivery with an ordering key may not be retried now: the head of a key is
    its oldest pending delivery, so the retried one would be the head at once, beside the later
    delivery of its key being attempted (two of a key at a time to one endpoint)."""
    return StoreError(
        "a later delivery with the same ordering key is being attempted:"
        f" retry {delivery_id!r} once it ends"
    )
