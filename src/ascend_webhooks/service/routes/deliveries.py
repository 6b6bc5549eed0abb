"""Deliveries: list, inspect (with every attempt), retry a failed one by hand."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ...store.models import DeliveryStatus
from ..auth import OrgScope
from ..problems import Problem
from ..responses import JSONResponse
from ..schemas import (
    DeliveryList,
    DeliveryOut,
    delivery_list_item_view,
    delivery_view,
    page_view,
)
from .common import DEFAULT_LIMIT, After, JSONBodyRoute, Limit, Svc, problems

__all__ = ["router"]

router = APIRouter(tags=["deliveries"], route_class=JSONBodyRoute)


@router.get(
    "/organizations/{org}/deliveries",
    response_model=DeliveryList,
    responses=problems(404),
    summary="List deliveries, newest first",
)
async def list_deliveries(
    org: OrgScope,
    services: Svc,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
    status: Annotated[
        DeliveryStatus | None, Query(description="only deliveries in this status")
    ] = None,
    endpoint_id: Annotated[
        str | None, Query(max_length=200, description="only deliveries to this endpoint")
    ] = None,
) -> JSONResponse:
    page = await services.store.list_deliveries(
        org,
        limit=limit,
        after=services.box.open_cursor(org, after, listing="deliveries"),
        status=status,
        endpoint_id=endpoint_id,
    )
    return JSONResponse(
        page_view(
            [delivery_list_item_view(d) for d in page.items],
            services.box.seal_cursor(org, page.next_cursor, listing="deliveries"),
        )
    )


@router.get(
    "/organizations/{org}/deliveries/{delivery}",
    response_model=DeliveryOut,
    responses=problems(404),
    summary="Get a delivery with its attempts",
)
async def get_delivery(org: OrgScope, delivery: str, services: Svc) -> JSONResponse:
    return JSONResponse(delivery_view(await services.store.get_delivery(org, delivery)))


@router.post(
    "/organizations/{org}/deliveries/{delivery}/retry",
    status_code=202,
    response_model=DeliveryOut,
    responses=problems(404, 409),
    summary="Start one more round of attempts for a failed delivery",
)
async def retry_delivery(org: OrgScope, delivery: str, services: Svc) -> JSONResponse:
    current = await services.store.get_delivery(org, delivery)
    if current.status is not DeliveryStatus.FAILED:
        raise Problem(
            409,
            f"delivery {delivery!r} is {current.status.value}; only a failed delivery is retried",
            slug="delivery-not-failed",
        )
    retried = await services.store.retry_delivery(org, delivery)
    return JSONResponse(delivery_view(retried), status_code=202)
