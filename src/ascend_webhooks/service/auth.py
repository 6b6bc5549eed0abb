"""Bearer-token authentication and organization scoping for every ``/v1`` route.

Admin tokens see everything. An organization's token sees only that organization: anything of
another organization answers 404 (not 403), so a token cannot even learn what exists elsewhere.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .problems import Problem
from .state import Principal, Services, get_services
from .tokens import hash_token, same_hash

__all__ = ["Auth", "OrgScope", "authenticate", "organization_scope", "require_admin"]

_bearer = HTTPBearer(
    auto_error=False,
    description=(
        "An admin token, or an organization's token from POST /v1/organizations/{org}/tokens"
    ),
)
_MAX_TOKEN_LENGTH = 512


def _unauthorized(detail: str, *, invalid: bool) -> Problem:
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    return Problem(401, detail, slug="unauthorized", headers={"WWW-Authenticate": challenge})


async def authenticate(
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller of this request; 401 without a valid bearer token."""
    if credentials is None or not credentials.credentials:
        raise _unauthorized("send `Authorization: Bearer <token>`", invalid=False)
    token = credentials.credentials
    if len(token) > _MAX_TOKEN_LENGTH:
        raise _unauthorized("invalid token", invalid=True)
    token_hash = hash_token(token)
    if services.admin_token_hash is not None and same_hash(token_hash, services.admin_token_hash):
        return Principal(token_id=None, organization_id=None)
    principal = services.cached_principal(token_hash)
    if principal is not None:
        return principal
    # Looked up by its hash: the hash reveals nothing, so timing leaks nothing of the token.
    found = await services.store.find_token(token_hash)
    if found is None:
        raise _unauthorized("invalid token", invalid=True)
    principal = Principal(token_id=found.id, organization_id=found.organization_id)
    services.remember(token_hash, principal)
    return principal


Auth = Annotated[Principal, Depends(authenticate)]


async def require_admin(principal: Auth) -> Principal:
    """403 unless the caller holds an admin token."""
    if not principal.is_admin:
        raise Problem(403, "this needs an admin token", slug="forbidden")
    return principal


async def organization_scope(
    org: Annotated[str, Path(description="organization id")],
    principal: Auth,
    services: Annotated[Services, Depends(get_services)],
) -> str:
    """The organization of the route, once the caller may see it (else 404)."""
    if principal.organization_id is not None:
        if principal.organization_id != org:
            raise Problem(404, f"organization {org!r} not found", slug="not-found")
        return org
    if org not in services.known_organizations:
        await services.store.get_organization(org)  # NotFoundError → 404
        services.remember_organization(org)
    return org


OrgScope = Annotated[str, Depends(organization_scope)]
