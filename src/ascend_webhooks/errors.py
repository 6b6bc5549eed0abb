"""The exception tree of ascend-webhooks.

::

    WebhookError                      root: catch this to handle every webhook failure
    ├── SignatureVerificationError    the request is not authentic or not fresh: answer 401
    └── InvalidPayloadError           authentic, but not an {"id", "type", "data"} event: answer 400

Programming mistakes (an empty secret, a non-positive tolerance) raise ``ValueError``, and
arguments of the wrong type (a parsed dict where the raw body is meant) ``TypeError``, at the
call that made them, never one of these. Neither error is a ``ValueError``, so that the two
kinds of failure can be told apart by the ``except`` clause.
"""

from __future__ import annotations

__all__ = ["InvalidPayloadError", "SignatureVerificationError", "WebhookError"]


class WebhookError(Exception):
    """Root of every error raised while verifying or handling a webhook."""


class SignatureVerificationError(WebhookError):
    """The signature headers are missing, malformed, stale, or match no secret."""


class InvalidPayloadError(WebhookError):
    """The body is correctly signed but is not a JSON object with id, type and data."""
