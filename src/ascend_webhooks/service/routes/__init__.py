"""The API's routers, one module per resource."""

from __future__ import annotations

from fastapi import APIRouter

from . import deliveries, endpoints, events, keys, organizations, system, tokens

__all__ = ["system_router", "v1_router"]

v1_router = APIRouter(prefix="/v1")
for _module in (organizations, tokens, keys, endpoints, events, deliveries):
    v1_router.include_router(_module.router)
system_router = system.router
