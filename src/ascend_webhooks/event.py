"""The event a receiver gets once a request has been verified."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EVENT_ID_PATTERN", "EVENT_TYPE_PATTERN", "Event"]

# Event ids and types travel in URL paths and HTTP headers (X-Ascend-Event-Id/-Type), so they
# are restricted to visible ASCII; ids additionally to URL-safe characters. The API's models,
# its publish front and `trigger` check these, with ``re.fullmatch`` or pydantic's ``^…$``
# (Python's ``$`` alone would also accept a trailing newline).
EVENT_ID_PATTERN = r"[A-Za-z0-9._:~-]{1,255}"
EVENT_TYPE_PATTERN = r"[\x21-\x7e]{1,200}"


@dataclass(frozen=True, slots=True)
class Event:
    """One Ascend event: ``id`` is the idempotency key, ``type`` routes it, ``data`` is its body."""

    id: str
    type: str
    data: dict[str, Any]
    #: The exact bytes that were signed, for logging or re-verification.
    raw: bytes = field(default=b"", repr=False, compare=False)


def _slot_setter(name: str) -> Callable[[Event, Any], None]:
    setter: Callable[[Event, Any], None] = vars(Event)[name].__set__
    return setter


_allocate = Event.__new__
_set_id = _slot_setter("id")
_set_type = _slot_setter("type")
_set_data = _slot_setter("data")
_set_raw = _slot_setter("raw")


def _new_event(event_id: str, event_type: str, data: dict[str, Any], raw: bytes) -> Event:
    """Build an :class:`Event` through its slots, for the verifier's hot path.

    A frozen dataclass's ``__init__`` goes through ``object.__setattr__`` once per field, which
    costs about as much as the rest of a small event's verification; the slot descriptors
    give the same object at half the price.
    """
    event = _allocate(Event)
    _set_id(event, event_id)
    _set_type(event, event_type)
    _set_data(event, data)
    _set_raw(event, raw)
    return event
