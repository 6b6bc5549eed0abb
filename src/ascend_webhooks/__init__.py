"""Receive Ascend webhooks safely: verify the signature, then handle the event.

>>> from ascend_webhooks import verify
>>> event = verify(raw_body, request.headers, "whsec_...")  # doctest: +SKIP

The delivery service lives in :mod:`ascend_webhooks.service` and is installed with the
``server`` extra; this package's top level is the receiver API only.
"""

from __future__ import annotations

from .errors import InvalidPayloadError, SignatureVerificationError, WebhookError
from .event import Event
from .signature import Webhook, sign, verify

__all__ = [
    "Event",
    "InvalidPayloadError",
    "SignatureVerificationError",
    "Webhook",
    "WebhookError",
    "__version__",
    "sign",
    "verify",
]

__version__ = "0.1.0"
