"""Endpoints: the URLs an organization receives its events at."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ...delivery.ssrf import ForbiddenURLError, check_endpoint_url
from ..auth import OrgScope
from ..problems import Problem
from ..responses import JSONResponse
from ..schemas import EndpointCreate, EndpointList, EndpointOut, EndpointUpdate, endpoint_view
from ..schemas import page_view as _page
from ..settings import Settings
from .common import DEFAULT_LIMIT, After, JSONBodyRoute, Limit, Svc, id_cursor, problems

__all__ = ["router"]

router = APIRouter(tags=["endpoints"], route_class=JSONBodyRoute)


async def _check_url(url: str, settings: Settings) -> None:
    """422 naming the reason when the URL is malformed, not HTTPS, or not a public address."""
    try:
        await check_endpoint_url(
            url, allow_http=settings.allow_http, allow_private=settings.allow_private_networks
        )
    except ForbiddenURLError as exc:
        raise Problem(
            422,
            f"url: {exc}",
            slug="forbidden-url",
            errors=[{"loc": ["body", "url"], "msg": str(exc), "type": exc.code}],
        ) from None


@router.post(
    "/organizations/{org}/endpoints",
    status_code=201,
    response_model=EndpointOut,
    responses=problems(404),
    summary="Register an endpoint",
)
async def create_endpoint(org: OrgScope, body: EndpointCreate, services: Svc) -> JSONResponse:
    await _check_url(body.url, services.settings)
    endpoint = await services.store.create_endpoint(
        org, body.url, body.event_types, body.description, body.enabled
    )
    return JSONResponse(endpoint_view(endpoint), status_code=201)


@router.get(
    "/organizations/{org}/endpoints",
    response_model=EndpointList,
    responses=problems(404),
    summary="List endpoints",
)
async def list_endpoints(
    org: OrgScope, services: Svc, limit: Limit = DEFAULT_LIMIT, after: After = None
) -> JSONResponse:
    page = await services.store.list_endpoints(org, limit=limit, after=id_cursor(after, "ep"))
    return JSONResponse(_page([endpoint_view(e) for e in page.items], page.next_cursor))


@router.get(
    "/organizations/{org}/endpoints/{endpoint}",
    response_model=EndpointOut,
    responses=problems(404),
    summary="Get an endpoint",
)
async def get_endpoint(org: OrgScope, endpoint: str, services: Svc) -> JSONResponse:
    return JSONResponse(endpoint_view(await services.store.get_endpoint(org, endpoint)))


@router.patch(
    "/organizations/{org}/endpoints/{endpoint}",
    response_model=EndpointOut,
    responses=problems(404),
    summary="Change an endpoint (only the fields sent)",
)
async def update_endpoint(
    org: OrgScope, endpoint: str, body: EndpointUpdate, services: Svc
) -> JSONResponse:
    changes: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set}
    for name in ("url", "enabled"):
        if name in changes and changes[name] is None:
            raise Problem(
                422,
                f"{name}: may not be null",
                slug="validation-error",
                errors=[{"loc": ["body", name], "msg": "may not be null", "type": "null"}],
            )
    if "url" in changes:
        await _check_url(changes["url"], services.settings)
    if not changes:
        return JSONResponse(endpoint_view(await services.store.get_endpoint(org, endpoint)))
    updated = await services.store.update_endpoint(org, endpoint, **changes)
    return JSONResponse(endpoint_view(updated))


@router.delete(
    "/organizations/{org}/endpoints/{endpoint}",
    status_code=204,
    response_class=Response,
    responses=problems(404),
    summary="Delete an endpoint (its pending deliveries fail)",
)
async def delete_endpoint(org: OrgScope, endpoint: str, services: Svc) -> Response:
    await services.store.delete_endpoint(org, endpoint)
    return Response(status_code=204)
