"""Admin tokens: issue another (shown once), list (never the secret), delete.

An operator rotates the admin token by issuing a new one and deleting the old. The last stored
admin token cannot be deleted (409) unless ``ASCEND_WEBHOOKS_ADMIN_TOKEN`` is configured, so the
operator is never locked out of the API. A deleted token stops working in this process at once;
another API process on the same database stops honouring it within the token cache's TTL (30 s).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Response

from ...store.base import LastAdminTokenError
from ..auth import require_admin
from ..problems import Problem
from ..responses import NO_STORE, JSONResponse
from ..schemas import TokenCreate, TokenCreated, TokenList, token_summary_view, token_view
from ..state import Principal
from ..tokens import hash_token, new_token
from .common import SHOWN_ONCE, JSONBodyRoute, Svc, problems

__all__ = ["router"]

log = logging.getLogger("ascend_webhooks.service")
router = APIRouter(
    tags=["tokens"], dependencies=[Depends(require_admin)], route_class=JSONBodyRoute
)


@router.get(
    "/tokens",
    response_model=TokenList,
    responses=problems(403),
    summary="List the stored admin tokens (admin; never the tokens themselves)",
)
async def list_admin_tokens(services: Svc) -> JSONResponse:
    tokens = await services.store.list_tokens(None)
    return JSONResponse({"data": [token_summary_view(t) for t in tokens]})


@router.post(
    "/tokens",
    status_code=201,
    response_model=TokenCreated,
    responses={**SHOWN_ONCE, **problems(403)},
    summary="Issue another admin token (admin; shown once)",
)
async def create_admin_token(
    services: Svc, body: Annotated[TokenCreate | None, Body()] = None
) -> JSONResponse:
    secret = new_token()
    token = await services.store.create_token(
        None, hash_token(secret), body.name if body is not None else None
    )
    log.info("issued admin token %s", token.id)
    return JSONResponse(token_view(token, secret), status_code=201, headers=NO_STORE)


@router.delete(
    "/tokens/{token}",
    status_code=204,
    response_class=Response,
    responses=problems(403, 404, 409),
    summary="Delete (revoke) an admin token (admin; not the last one)",
)
async def delete_admin_token(
    token: Annotated[str, Path(max_length=200, description="token id")],
    services: Svc,
    principal: Annotated[Principal, Depends(require_admin)],
) -> Response:
    # The last stored admin token is kept unless ASCEND_WEBHOOKS_ADMIN_TOKEN is configured (the
    # way back in); the store checks it in the delete's own transaction, so two deletes racing
    # for the last two cannot both succeed.
    try:
        await services.store.delete_token(
            None, token, keep_last_admin=services.settings.admin_token is None
        )  # NotFoundError → 404
    except LastAdminTokenError:
        raise Problem(
            409,
            f"token {token!r} is the last admin token; issue another one first"
            " (or configure ASCEND_WEBHOOKS_ADMIN_TOKEN)",
            slug="last-admin-token",
        ) from None
    services.forget_token(token)
    log.info(
        "deleted admin token %s (by %s)", token, principal.token_id or "the configured admin token"
    )
    return Response(status_code=204)
