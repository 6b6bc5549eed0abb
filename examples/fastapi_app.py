"""Receive Ascend webhooks in a FastAPI app.

Run it::

    pip install 'ascend-webhooks[fastapi]' uvicorn
    ASCEND_WEBHOOK_SECRETS=whsec_... python examples/fastapi_app.py

then send it a signed sample event::

    ascend-webhooks trigger invoice.paid --url http://127.0.0.1:8001/webhooks --secret whsec_...

``ASCEND_WEBHOOK_SECRETS`` takes several comma-separated secrets during a key rotation.
With ``REDIS_URL`` set, event ids are de-duplicated in Redis (shared by every worker);
otherwise in this process's memory.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import FastAPI

from ascend_webhooks import Event
from ascend_webhooks.receiver import MEMORY, AsyncRedisIdempotencyStore, Router
from ascend_webhooks.receiver.contrib.fastapi import ascend_endpoint

logger = logging.getLogger("example.fastapi")

SECRETS = [s.strip() for s in os.environ.get("ASCEND_WEBHOOK_SECRETS", "").split(",") if s.strip()]
if not SECRETS:
    raise SystemExit(
        "set ASCEND_WEBHOOK_SECRETS to your webhook key (comma-separate two to rotate)"
    )

#: What this toy application knows: invoices paid and payouts failed, by id.
paid_invoices: dict[str, dict[str, Any]] = {}
failed_payouts: list[str] = []

router = Router()


@router.on("invoice.paid")
async def invoice_paid(event: Event) -> None:
    # Handlers must be safe to run twice: a failure releases the event for the retry.
    paid_invoices[str(event.data.get("id", event.id))] = event.data
    logger.info("invoice paid: event %s", event.id)


@router.on("payout.failed")
def payout_failed(event: Event) -> None:
    # A plain function runs in a worker thread, so blocking I/O here is fine.
    failed_payouts.append(event.id)


@router.fallback
def everything_else(event: Event) -> None:
    logger.info("ignoring %s event %s", event.type, event.id)


redis_url = os.environ.get("REDIS_URL")
store = AsyncRedisIdempotencyStore.from_url(redis_url) if redis_url else MEMORY

app = FastAPI(title="Ascend webhook receiver")
app.add_api_route(
    "/webhooks",
    ascend_endpoint(SECRETS, router, store=store),
    methods=["POST"],
    include_in_schema=False,
)


if __name__ == "__main__":
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8001")))
