"""The event a receiver gets once a request has been verified."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event"]


@dataclass(frozen=True, slots=True)
class Event:
    """One Ascend event: ``id`` is the idempotency key, ``type`` routes it, ``data`` is its body."""

    id: str
    type: str
    data: dict[str, Any]
    #: The exact bytes that were signed, for logging or re-verification.
    raw: bytes = field(default=b"", repr=False, compare=False)
