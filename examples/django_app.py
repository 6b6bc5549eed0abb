"""Receive Ascend webhooks in Django: a whole project in one file.

Run it::

    pip install 'ascend-webhooks[django]'
    ASCEND_WEBHOOK_SECRETS=whsec_... python examples/django_app.py runserver 127.0.0.1:8002

then send it a signed sample event (mind the trailing slash: the sender follows no redirect)::

    ascend-webhooks trigger invoice.paid --url http://127.0.0.1:8002/webhooks/ --secret whsec_...

In a real project the settings go to settings.py, the router and handlers to a module of your
app, and the ``path(...)`` line to urls.py.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import django
from django.conf import settings

SECRETS = [s.strip() for s in os.environ.get("ASCEND_WEBHOOK_SECRETS", "").split(",") if s.strip()]
if not SECRETS:
    raise SystemExit(
        "set ASCEND_WEBHOOK_SECRETS to your webhook key (comma-separate two to rotate)"
    )

if not settings.configured:
    settings.configure(
        DEBUG=os.environ.get("DJANGO_DEBUG") == "1",
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-only-set-DJANGO_SECRET_KEY"),
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        # CSRF protection stays on for the rest of the site: the webhook view is exempt,
        # because the signature is what authenticates Ascend.
        MIDDLEWARE=[
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
        ],
        INSTALLED_APPS=[],
    )
    django.setup()

from django.urls import path  # noqa: E402 (needs the settings above)

from ascend_webhooks import Event  # noqa: E402
from ascend_webhooks.receiver import Router  # noqa: E402
from ascend_webhooks.receiver.contrib.django import ascend_view  # noqa: E402

logger = logging.getLogger("example.django")

#: What this toy application knows: invoices paid, by id.
paid_invoices: dict[str, dict[str, Any]] = {}

router = Router()


@router.on("invoice.paid")
def invoice_paid(event: Event) -> None:
    # Runs in a thread pool after the 200 was sent; must be safe to run twice.
    paid_invoices[str(event.data.get("id", event.id))] = event.data
    logger.info("invoice paid: event %s", event.id)


urlpatterns = [path("webhooks/", ascend_view(SECRETS, router))]


if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    logging.basicConfig(level=logging.INFO)
    execute_from_command_line(sys.argv)
