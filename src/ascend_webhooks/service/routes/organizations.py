"""Organizations and their API tokens: create, list (never the secret), delete.

A deleted token stops working in this process at once (its cache entry is dropped); another API
process on the same database stops honouring it within the token cache's TTL (30 s).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Response

from ..auth import Auth, OrgScope, require_admin
from ..responses import NO_STORE, JSONResponse
from ..schemas import (
    OrganizationCreate,
    OrganizationList,
    OrganizationOut,
    TokenCreate,
    TokenCreated,
    TokenList,
    organization_view,
    page_view,
    token_summary_view,
    token_view,
)
from ..state import Principal
from ..tokens import hash_token, new_token
from .common import DEFAULT_LIMIT, SHOWN_ONCE, After, JSONBodyRoute, Limit, Svc, id_cursor, problems

__all__ = ["router"]

router = APIRouter(tags=["organizations"], route_class=JSONBodyRoute)


@router.post(
    "/organizations",
    status_code=201,
    response_model=OrganizationOut,
    responses=problems(403),
    summary="Create an organization (admin)",
)
async def create_organization(
    body: OrganizationCreate,
    services: Svc,
    _: Annotated[Principal, Depends(require_admin)],
) -> JSONResponse:
    org = await services.store.create_organization(body.name)
    return JSONResponse(organization_view(org), status_code=201)


@router.get(
    "/organizations",
    response_model=OrganizationList,
    responses=problems(),
    summary="List organizations (an organization's token sees only its own)",
)
async def list_organizations(
    services: Svc, principal: Auth, limit: Limit = DEFAULT_LIMIT, after: After = None
) -> JSONResponse:
    page = await services.store.list_organizations(
        limit=limit, after=id_cursor(after, "org"), only=principal.organization_id
    )
    return JSONResponse(page_view([organization_view(o) for o in page.items], page.next_cursor))


@router.get(
    "/organizations/{org}",
    response_model=OrganizationOut,
    responses=problems(404),
    summary="Get an organization",
)
async def get_organization(org: OrgScope, services: Svc) -> JSONResponse:
    return JSONResponse(organization_view(await services.store.get_organization(org)))


@router.post(
    "/organizations/{org}/tokens",
    status_code=201,
    response_model=TokenCreated,
    responses={**SHOWN_ONCE, **problems(404)},
    summary="Issue an API token that sees only this organization (shown once)",
)
async def create_token(
    org: OrgScope,
    services: Svc,
    body: Annotated[TokenCreate | None, Body()] = None,
) -> JSONResponse:
    secret = new_token()
    token = await services.store.create_token(
        org, hash_token(secret), body.name if body is not None else None
    )
    return JSONResponse(token_view(token, secret), status_code=201, headers=NO_STORE)


@router.get(
    "/organizations/{org}/tokens",
    response_model=TokenList,
    responses=problems(404),
    summary="List this organization's API tokens (never the tokens themselves)",
)
async def list_tokens(org: OrgScope, services: Svc) -> JSONResponse:
    tokens = await services.store.list_tokens(org)
    return JSONResponse({"data": [token_summary_view(t) for t in tokens]})


@router.delete(
    "/organizations/{org}/tokens/{token}",
    status_code=204,
    response_class=Response,
    responses=problems(404),
    summary="Delete (revoke) one of this organization's API tokens",
)
async def delete_token(
    org: OrgScope,
    token: Annotated[str, Path(max_length=200, description="token id")],
    services: Svc,
) -> Response:
    await services.store.delete_token(org, token)  # NotFoundError → 404
    services.forget_token(token)
    return Response(status_code=204)
