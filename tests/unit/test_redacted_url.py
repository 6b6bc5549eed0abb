"""The database URL as the commands log it: every password hidden, the rest as given."""

from __future__ import annotations

import pytest

from ascend_webhooks.service.commands import _redacted


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/db?password=S3CRETPW",
            "postgresql://postgres@127.0.0.1:5432/db?password=***",
        ),
        ("postgresql://app:S3CRETPW@db:5432/aw", "postgresql://app:***@db:5432/aw"),
        ("postgresql://app:S3C@RET:PW@db/aw", "postgresql://app:***@db/aw"),  # "@" in it
        (
            "postgresql://app:PW1@db/aw?pool_size=5&sslpassword=PW2&password=PW3#x",
            "postgresql://app:***@db/aw?pool_size=5&sslpassword=***&password=***#x",
        ),
        # Names as the drivers read them: percent-decoded.
        ("postgresql:///aw?pass%77ord=PW&host=/run", "postgresql:///aw?pass%77ord=***&host=/run"),
        ("postgresql:///aw?PASSWORD=PW", "postgresql:///aw?PASSWORD=***"),
        # Nothing secret: as given, the empty hosts of sqlite:/// and postgresql:/// included.
        ("sqlite:///./ascend-webhooks.db", "sqlite:///./ascend-webhooks.db"),
        ("sqlite:////var/lib/aw.db?mode=rwc", "sqlite:////var/lib/aw.db?mode=rwc"),
        ("postgresql:///aw?password", "postgresql:///aw?password"),
        ("postgresql://postgres@[::1]:5432/aw", "postgresql://postgres@[::1]:5432/aw"),
        ("postgresql://app@db/aw?passwords=x", "postgresql://app@db/aw?passwords=x"),
    ],
)
def test_passwords_are_hidden_and_nothing_else(url: str, logged: str) -> None:
    assert _redacted(url) == logged
