"""Minimal Django settings for the receiver tests: no database, no apps, CSRF on."""

from __future__ import annotations

import django
from django.conf import settings

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]


def configure() -> None:
    """Configure Django once per process (each test overrides ROOT_URLCONF as it needs)."""
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only-not-a-secret",
        ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=MIDDLEWARE,
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )
    django.setup()


urlpatterns: list[object] = []
