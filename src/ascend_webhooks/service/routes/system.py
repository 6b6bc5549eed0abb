"""Unauthenticated operational routes: health and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from ...store.models import DeliveryStatus
from ..counts_cache import CachedCounts
from ..problems import Problem
from ..responses import JSONResponse
from ..schemas import Health
from .common import PROBLEM_SCHEMA, JSONBodyRoute, Svc

__all__ = ["DELIVERIES", "router"]

log = logging.getLogger("ascend_webhooks.service")
router = APIRouter(tags=["operations"], route_class=JSONBodyRoute)

DELIVERIES = Gauge(
    "ascend_webhooks_deliveries", "Deliveries in the database by status.", ["status"]
)
DATABASE_UP = Gauge(
    "ascend_webhooks_database_up",
    "1 if the database answered the last count of deliveries (at most a few seconds ago), else 0.",
)


@router.get(
    "/healthz",
    response_model=Health,
    responses={
        503: {
            "description": "The database does not answer",
            "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
        }
    },
    summary="200 when the database answers",
)
async def healthz(services: Svc) -> JSONResponse:
    try:
        healthy = await services.store.ping()
    except Exception:  # a health check reports; it does not fail
        log.warning("health check: the database did not answer", exc_info=True)
        healthy = False
    if not healthy:
        raise Problem(503, "the database does not answer", slug="unavailable")
    return JSONResponse({"status": "ok"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
)
async def metrics(request: Request, services: Svc) -> Response:
    try:
        counts = await _counts_cache(request, services).get()
    except Exception:
        # The process's own counters are what an outage is watched with: still served, the
        # deliveries gauge left out (a stale count would look current) and the database down.
        log.warning("metrics: the deliveries could not be counted", exc_info=True)
        DELIVERIES.clear()
        DATABASE_UP.set(0)
    else:
        for status in DeliveryStatus:
            DELIVERIES.labels(status=status.value).set(counts.get(status, 0))
        DATABASE_UP.set(1)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _counts_cache(request: Request, services: Svc) -> CachedCounts:
    """The app's cache of the deliveries-by-status counts (see counts_cache.py).

    Made on the first scrape: nothing awaits between the look-up and the assignment, so two
    scrapes cannot each make one.
    """
    cache: CachedCounts | None = getattr(request.app.state, "delivery_counts", None)
    if cache is None:
        cache = CachedCounts(services.store.delivery_counts)
        request.app.state.delivery_counts = cache
    return cache
