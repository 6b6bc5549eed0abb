"""``ASCEND_WEBHOOKS_STARTUP_TIMEOUT``: how long a starting command waits for the database."""

from __future__ import annotations

import pytest

from ascend_webhooks.service.settings import Settings, SettingsError


def test_the_default_is_a_minute() -> None:
    assert Settings.from_env({}).startup_timeout == 60


@pytest.mark.parametrize(("text", "seconds"), [("2.5", 2.5), ("300", 300), ("0", 0)])
def test_seconds_are_read(text: str, seconds: float) -> None:
    env = {"ASCEND_WEBHOOKS_STARTUP_TIMEOUT": text}
    assert Settings.from_env(env).startup_timeout == seconds


@pytest.mark.parametrize("text", ["-1", "soon", "inf", "nan"])
def test_bad_values_name_the_variable(text: str) -> None:
    with pytest.raises(SettingsError, match="ASCEND_WEBHOOKS_STARTUP_TIMEOUT"):
        Settings.from_env({"ASCEND_WEBHOOKS_STARTUP_TIMEOUT": text})
