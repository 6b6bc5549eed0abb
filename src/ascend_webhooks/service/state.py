"""What the routes share within one app: the store, the settings, the secret box, the auth."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from ..store import Store
from .crypto import SecretBox
from .settings import Settings

__all__ = ["Principal", "Services", "get_services"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an admin (``organization_id`` None) or one organization's token."""

    token_id: str | None
    organization_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.organization_id is None


@dataclass(slots=True)
class Services:
    store: Store
    settings: Settings
    box: SecretBox
    admin_token_hash: bytes | None = None
    # token hash -> (principal, monotonic expiry): saves a database round-trip per request. A
    # token deleted through this process is forgotten at once (``forget_token``); another API
    # process sharing the database stops honouring it within the TTL (30 s).
    token_cache: dict[bytes, tuple[Principal, float]] = field(default_factory=dict)
    # Organizations are never deleted, so one that existed once still exists: an admin's
    # requests skip the lookup that checks the organization of the route.
    known_organizations: set[str] = field(default_factory=set)

    def remember_organization(self, organization_id: str) -> None:
        if len(self.known_organizations) >= 100_000:
            self.known_organizations.clear()
        self.known_organizations.add(organization_id)

    def cached_principal(self, token_hash: bytes) -> Principal | None:
        hit = self.token_cache.get(token_hash)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def remember(self, token_hash: bytes, principal: Principal, ttl: float = 30.0) -> None:
        if len(self.token_cache) >= 10_000:
            self.token_cache.clear()
        self.token_cache[token_hash] = (principal, time.monotonic() + ttl)

    def forget_token(self, token_id: str) -> None:
        """Drop a deleted token from the cache, so it stops working in this process at once."""
        stale = [h for h, (p, _) in self.token_cache.items() if p.token_id == token_id]
        for token_hash in stale:
            del self.token_cache[token_hash]


async def get_services(request: Request) -> Services:
    """The app's shared services (set up by the lifespan).

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, and this
    one is on every request (a thread hop each time for one attribute read).
    """
    services: Services = request.app.state.services
    return services
