"""The public receiver API: exactly the names of SPEC section 2, and nothing heavy on import."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import ascend_webhooks

SPEC_NAMES = {
    "Event",
    "Webhook",
    "sign",
    "verify",
    "WebhookError",
    "SignatureVerificationError",
    "InvalidPayloadError",
}


def test_all_is_exactly_the_contract() -> None:
    assert set(ascend_webhooks.__all__) == SPEC_NAMES | {"__version__"}
    assert len(ascend_webhooks.__all__) == len(set(ascend_webhooks.__all__))


def test_every_public_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from ascend_webhooks import *", namespace)  # noqa: S102 - the star import is the test
    assert SPEC_NAMES | {"__version__"} <= set(namespace)
    for name in ascend_webhooks.__all__:
        assert getattr(ascend_webhooks, name) is namespace[name]


def test_error_tree() -> None:
    from ascend_webhooks import InvalidPayloadError, SignatureVerificationError, WebhookError

    assert issubclass(WebhookError, Exception)
    assert issubclass(SignatureVerificationError, WebhookError)
    assert issubclass(InvalidPayloadError, WebhookError)
    assert not issubclass(SignatureVerificationError, InvalidPayloadError)
    assert not issubclass(InvalidPayloadError, SignatureVerificationError)
    # Neither is a ValueError: a caller's `except ValueError` for config mistakes stays apart.
    assert not issubclass(WebhookError, ValueError | KeyError | TypeError)


def test_version_is_the_distribution_version() -> None:
    assert ascend_webhooks.__version__ == version("ascend-webhooks")


def test_importing_the_package_pulls_in_no_framework_or_http_client() -> None:
    heavy = ["fastapi", "starlette", "flask", "werkzeug", "django", "pyreqwest", "httpx"]
    probe = (
        "import sys, json, ascend_webhooks\n"
        "from ascend_webhooks import verify, sign, Webhook\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == []


def test_the_probe_would_notice_a_heavy_import() -> None:
    # Keeps the test above honest: the same probe does see a framework once one is imported.
    probe = "import sys, ascend_webhooks, starlette; print('starlette' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "True"
