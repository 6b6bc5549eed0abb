"""Reading the service configuration from ASCEND_WEBHOOKS_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from ascend_webhooks.service.settings import DEFAULT_RETRY_SCHEDULE, Settings, SettingsError


def test_defaults_match_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///./ascend-webhooks.db"
    assert settings.admin_token is None
    assert settings.retry_schedule == DEFAULT_RETRY_SCHEDULE
    assert len(settings.retry_schedule) == 10
    assert sum(settings.retry_schedule) / 3600 == pytest.approx(16.0, abs=1.0)
    assert settings.retry_jitter == 0.2
    assert settings.attempt_timeout == 15
    assert settings.allow_http is False
    assert settings.allow_private_networks is False
    assert settings.max_payload_bytes == 262144
    assert settings.master_key is None


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "ASCEND_WEBHOOKS_DATABASE_URL": "postgresql://db/aw",
            "ASCEND_WEBHOOKS_ADMIN_TOKEN": "admin-secret",
            "ASCEND_WEBHOOKS_RETRY_SCHEDULE": "0.5, 1,2",
            "ASCEND_WEBHOOKS_ATTEMPT_TIMEOUT": "2.5",
            "ASCEND_WEBHOOKS_ALLOW_HTTP": "1",
            "ASCEND_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
            "ASCEND_WEBHOOKS_MAX_PAYLOAD_BYTES": "1024",
            "ASCEND_WEBHOOKS_MASTER_KEY": "a2V5",
        }
    )
    assert settings.database_url == "postgresql://db/aw"
    assert settings.admin_token == "admin-secret"
    assert settings.retry_schedule == (0.5, 1.0, 2.0)
    assert settings.attempt_timeout == 2.5
    assert settings.allow_http is True
    assert settings.allow_private_networks is True
    assert settings.max_payload_bytes == 1024
    assert settings.master_key == "a2V5"


def test_empty_values_mean_the_default() -> None:
    settings = Settings.from_env({"ASCEND_WEBHOOKS_ATTEMPT_TIMEOUT": "", "ASCEND_WEBHOOKS_X": "1"})
    assert settings.attempt_timeout == 15


@pytest.mark.parametrize("blank", ["", " ", "  \t ", "\n"])
def test_a_blank_retry_schedule_is_the_default_not_zero_retries(blank: str) -> None:
    settings = Settings.from_env({"ASCEND_WEBHOOKS_RETRY_SCHEDULE": blank})
    assert settings.retry_schedule == DEFAULT_RETRY_SCHEDULE


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RETRY_SCHEDULE", "1,2,3,4,5,6,7,8,9,10,11"),
        ("RETRY_SCHEDULE", "5,-1"),
        ("RETRY_SCHEDULE", "5,,6"),
        ("RETRY_SCHEDULE", "nan"),
        ("RETRY_SCHEDULE", "5,1e12"),
        ("ATTEMPT_TIMEOUT", "0"),
        ("ATTEMPT_TIMEOUT", "inf"),
        ("ATTEMPT_TIMEOUT", "soon"),
        ("ALLOW_HTTP", "maybe"),
        ("ALLOW_PRIVATE_NETWORKS", "2"),
        ("MAX_PAYLOAD_BYTES", "1.5"),
        ("MAX_PAYLOAD_BYTES", "-5"),
        # (1e308 s was accepted, and every attempt then crashed on its deadline's overflow)
        ("ATTEMPT_TIMEOUT", "1e308"),
        ("ATTEMPT_TIMEOUT", "3600.5"),
        # (a lease of a nanosecond would spin its heartbeat)
        ("LEASE_SECONDS", "1e-9"),
        ("LEASE_SECONDS", "0.5"),
        ("CA_FILE", "/nonexistent.pem"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"ASCEND_WEBHOOKS_{name}"):
        Settings.from_env({f"ASCEND_WEBHOOKS_{name}": value})


def test_ten_retries_at_most_and_flags_spelled_many_ways() -> None:
    schedule = ",".join(["1"] * 10)
    assert len(Settings.from_env({"ASCEND_WEBHOOKS_RETRY_SCHEDULE": schedule}).retry_schedule) == 10
    for word, expected in [("on", True), ("YES", True), ("0", False), ("off", False)]:
        assert Settings.from_env({"ASCEND_WEBHOOKS_ALLOW_HTTP": word}).allow_http is expected


def test_worker_tuning_variables(tmp_path: Path) -> None:
    ca_file = tmp_path / "extra.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    settings = Settings.from_env(
        {
            "ASCEND_WEBHOOKS_CA_FILE": str(ca_file),
            "ASCEND_WEBHOOKS_WORKER_CONCURRENCY": "16",
            "ASCEND_WEBHOOKS_ENDPOINT_CONCURRENCY": "2",
            "ASCEND_WEBHOOKS_LEASE_SECONDS": "30",
            "ASCEND_WEBHOOKS_DELIVERY_PROCESSES": "3",
        }
    )
    assert settings.delivery_processes == 3
    assert Settings.from_env({}).delivery_processes == 0
    assert Settings.from_env({"ASCEND_WEBHOOKS_DELIVERY_PROCESSES": "0"}).delivery_processes == 0
    assert settings.ca_file == str(ca_file)
    assert settings.worker_concurrency == 16
    assert settings.endpoint_concurrency == 2
    assert settings.lease_seconds == 30
    for name, value in [
        ("WORKER_CONCURRENCY", "1.5"),
        ("ENDPOINT_CONCURRENCY", "0"),
        ("DELIVERY_PROCESSES", "-1"),
        ("DELIVERY_PROCESSES", "2.5"),
        ("DELIVERY_PROCESSES", "two"),
    ]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({f"ASCEND_WEBHOOKS_{name}": value})


def test_a_retry_delay_is_seven_days_at_most() -> None:
    week = Settings.from_env({"ASCEND_WEBHOOKS_RETRY_SCHEDULE": "5,604800"})
    assert week.retry_schedule == (5.0, 604800.0)
    # 1e12 s once passed, then overflowed the date of every failed attempt's retry.
    for text in ("604800.5", "1e12"):
        with pytest.raises(
            SettingsError, match=r"RETRY_SCHEDULE: '.*' is longer .* 604800 seconds"
        ):
            Settings.from_env({"ASCEND_WEBHOOKS_RETRY_SCHEDULE": f"5,{text}"})


def test_the_secrets_stay_out_of_the_settings_repr() -> None:
    settings = Settings(admin_token="aw_top_secret_token", master_key="c2VjcmV0LWtleQ==")
    shown = repr(settings)
    assert "aw_top_secret_token" not in shown
    assert "c2VjcmV0LWtleQ==" not in shown
    assert "database_url" in shown  # the rest is still there to read


def test_the_bounds_of_the_attempt_timeout_and_the_lease_are_allowed() -> None:
    env = {"ASCEND_WEBHOOKS_ATTEMPT_TIMEOUT": "3600", "ASCEND_WEBHOOKS_LEASE_SECONDS": "1"}
    settings = Settings.from_env(env)
    assert (settings.attempt_timeout, settings.lease_seconds) == (3600, 1)


@pytest.mark.parametrize("content", [b"", b"not a certificate\n", b"\xff\xfe"])
def test_a_ca_file_that_is_no_pem_bundle_is_refused(tmp_path: Path, content: bytes) -> None:
    # Read first by the worker's HTTPS client, after migrating: a traceback, or with
    # --delivery-processes a child that crash-looped while the API stayed up.
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(content)
    with pytest.raises(SettingsError, match=r"ASCEND_WEBHOOKS_CA_FILE: '.*garbage\.pem'"):
        Settings.from_env({"ASCEND_WEBHOOKS_CA_FILE": str(garbage)})
    with pytest.raises(SettingsError, match="ASCEND_WEBHOOKS_CA_FILE"):
        Settings.from_env({"ASCEND_WEBHOOKS_CA_FILE": str(tmp_path)})  # a directory
