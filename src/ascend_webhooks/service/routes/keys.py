"""Webhook keys: issue (secret shown once, stored encrypted), list, activate, revoke.

Rotation without a failed delivery: issue key 2 (it does not sign yet), let the receiver accept
both secrets, activate key 2 (it signs from now on; the header still carries exactly one
``v1``), then revoke key 1. The last key that can sign cannot be revoked (409), so an
organization never ends up with deliveries nobody can sign.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter

from ...ids import new_id
from ...store import NotFoundError
from ...store.base import LastActiveKeyError
from ...store.models import WebhookKey
from ..auth import OrgScope
from ..crypto import new_webhook_secret
from ..problems import Problem
from ..responses import NO_STORE, JSONResponse
from ..schemas import KeyCreated, KeyList, KeyOut, key_view, page_view
from ..state import Services
from .common import SHOWN_ONCE, JSONBodyRoute, Svc, problems

__all__ = ["router"]

log = logging.getLogger("ascend_webhooks.service")
router = APIRouter(tags=["keys"], route_class=JSONBodyRoute)


async def _signing_key_id(services: Services, org: str) -> str | None:
    found = (await services.store.signing_keys([org])).get(org)
    return found.id if found is not None else None


async def _find(services: Services, org: str, key_id: str) -> tuple[WebhookKey, list[WebhookKey]]:
    keys = await services.store.list_keys(org)
    for key in keys:
        if key.id == key_id:
            return key, keys
    raise NotFoundError(f"key {key_id!r} not found")


@router.post(
    "/organizations/{org}/keys",
    status_code=201,
    response_model=KeyCreated,
    responses={**SHOWN_ONCE, **problems(404)},
    summary="Issue a webhook key (its secret is shown once)",
)
async def create_key(org: OrgScope, services: Svc) -> JSONResponse:
    secret = new_webhook_secret()
    # The id first: the ciphertext is bound to the organization and the key it is stored as.
    key_id = new_id("key")
    ciphertext = services.box.encrypt(secret, organization_id=org, key_id=key_id)
    # The first key signs at once; later ones wait for an explicit activation (rotation). The
    # store decides which is first in the insert's transaction, so of first keys issued at
    # once only one signs, and each answer says what was stored.
    key = await services.store.create_key(org, ciphertext, activate="if_first", key_id=key_id)
    active = key.activated_at is not None
    log.info("issued webhook key %s for %s (active=%s)", key.id, org, active)
    view = key_view(key, signing_key_id=key.id if active else None)
    view["secret"] = secret
    return JSONResponse(view, status_code=201, headers=NO_STORE)


@router.get(
    "/organizations/{org}/keys",
    response_model=KeyList,
    responses=problems(404),
    summary="List webhook keys (without secrets)",
)
async def list_keys(org: OrgScope, services: Svc) -> JSONResponse:
    keys = await services.store.list_keys(org)
    signing = await _signing_key_id(services, org)
    return JSONResponse(page_view([key_view(k, signing_key_id=signing) for k in keys], None))


@router.post(
    "/organizations/{org}/keys/{key}/activate",
    response_model=KeyOut,
    responses=problems(404, 409),
    summary="Make this key the signing key",
)
async def activate_key(org: OrgScope, key: str, services: Svc) -> JSONResponse:
    found, _ = await _find(services, org, key)
    if found.revoked_at is not None:
        raise Problem(409, f"key {key!r} is revoked and cannot sign again", slug="key-revoked")
    if await _signing_key_id(services, org) == key:
        return JSONResponse(key_view(found, signing_key_id=key))
    activated = await services.store.activate_key(org, key)
    log.info("activated webhook key %s for %s", key, org)
    return JSONResponse(key_view(activated, signing_key_id=await _signing_key_id(services, org)))


@router.delete(
    "/organizations/{org}/keys/{key}",
    response_model=KeyOut,
    responses=problems(404, 409),
    summary="Revoke a key for good (not the only one that can sign)",
)
async def revoke_key(org: OrgScope, key: str, services: Svc) -> JSONResponse:
    found, _ = await _find(services, org, key)
    if found.revoked_at is None:
        # The store looks for another active key in the revoke's own transaction: two keys
        # revoked at once cannot both go, leaving nothing to sign with.
        try:
            found = await services.store.revoke_key(org, key, keep_last_active=True)
        except LastActiveKeyError:
            raise Problem(
                409,
                f"key {key!r} is the only active key; issue and activate another one first",
                slug="last-active-key",
            ) from None
        log.info("revoked webhook key %s for %s", key, org)
    return JSONResponse(key_view(found, signing_key_id=await _signing_key_id(services, org)))
