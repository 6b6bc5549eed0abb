"""Receive Ascend webhooks in a Flask app.

Run it::

    pip install 'ascend-webhooks[flask]'
    ASCEND_WEBHOOK_SECRETS=whsec_... python examples/flask_app.py

then send it a signed sample event::

    ascend-webhooks trigger invoice.paid --url http://127.0.0.1:8003/webhooks --secret whsec_...

Event ids are de-duplicated in a SQLite file (``ASCEND_IDEMPOTENCY_DB``), which every worker
process of a gunicorn on this machine shares.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask

from ascend_webhooks import Event
from ascend_webhooks.receiver import Router, SQLiteIdempotencyStore
from ascend_webhooks.receiver.contrib.flask import ascend_blueprint

logger = logging.getLogger("example.flask")

SECRETS = [s.strip() for s in os.environ.get("ASCEND_WEBHOOK_SECRETS", "").split(",") if s.strip()]
if not SECRETS:
    raise SystemExit(
        "set ASCEND_WEBHOOK_SECRETS to your webhook key (comma-separate two to rotate)"
    )

#: What this toy application knows: invoices paid, by id.
paid_invoices: dict[str, dict[str, Any]] = {}

router = Router()


@router.on("invoice.paid")
def invoice_paid(event: Event) -> None:
    # Runs in a thread pool after the 200 was sent; must be safe to run twice.
    paid_invoices[str(event.data.get("id", event.id))] = event.data
    logger.info("invoice paid: event %s", event.id)


store = SQLiteIdempotencyStore(os.environ.get("ASCEND_IDEMPOTENCY_DB", "ascend-webhook-events.db"))

app = Flask(__name__)
app.register_blueprint(ascend_blueprint(SECRETS, router, path="/webhooks", store=store))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8003")))
