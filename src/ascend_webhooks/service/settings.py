"""The service's configuration, read from ``ASCEND_WEBHOOKS_*`` environment variables."""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DEFAULT_RETRY_SCHEDULE", "Settings", "SettingsError"]

DEFAULT_RETRY_SCHEDULE = (5.0, 30.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)
MAX_RETRIES = 10
#: The longest retry delay (7 days). Far past any useful wait, and short of what overflows a
#: date: a delay of 1e12 s made every failed attempt's next due time unrepresentable.
MAX_RETRY_DELAY = 7 * 24 * 3600.0
#: The longest attempt (1 hour): a receiver that has not answered by then will not; and past
#: about 1e9 s the attempt's deadline overflowed, so every attempt crashed instead of failing.
MAX_ATTEMPT_TIMEOUT = 3600.0
#: The shortest lease (1 s): the heartbeat renews a lease a few times per lease period, so a
#: lease of a nanosecond would renew in a busy loop and still expire between renewals.
MIN_LEASE_SECONDS = 1.0
_PREFIX = "ASCEND_WEBHOOKS_"


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the variable and what to fix."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = "sqlite:///./ascend-webhooks.db"
    # Out of repr (a settings object in a log line or a traceback's locals): both are secrets.
    admin_token: str | None = field(default=None, repr=False)
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    retry_jitter: float = 0.2  # each delay is drawn from delay * (1 ± jitter)
    attempt_timeout: float = 15.0
    allow_http: bool = False
    allow_private_networks: bool = False
    max_payload_bytes: int = 262_144
    # base64 AES key; default: a file beside the SQLite database
    master_key: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # extra PEM CA bundle trusted for HTTPS endpoints
    worker_concurrency: int = 128  # attempts working at once per worker process
    endpoint_concurrency: int = 8  # per-endpoint limit's start; adapts up to worker_concurrency
    lease_seconds: float = 60.0  # a claimed delivery's lease; renewed while in flight
    startup_timeout: float = 60.0  # how long a starting command waits for the database
    delivery_processes: int = 0  # worker processes `serve` starts beside its own worker
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every ``ASCEND_WEBHOOKS_*`` variable; raises SettingsError on a bad value."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(_PREFIX + name)
            return value if value not in (None, "") else None

        kwargs: dict[str, object] = {}
        if (url := get("DATABASE_URL")) is not None:
            kwargs["database_url"] = url
        if (token := get("ADMIN_TOKEN")) is not None:
            kwargs["admin_token"] = token
        if (schedule := get("RETRY_SCHEDULE")) is not None:
            kwargs["retry_schedule"] = parse_retry_schedule(schedule)
        if (timeout := get("ATTEMPT_TIMEOUT")) is not None:
            kwargs["attempt_timeout"] = _at_most(
                "ATTEMPT_TIMEOUT",
                timeout,
                _positive("ATTEMPT_TIMEOUT", timeout),
                MAX_ATTEMPT_TIMEOUT,
            )
        if (value := get("ALLOW_HTTP")) is not None:
            kwargs["allow_http"] = _flag("ALLOW_HTTP", value)
        if (value := get("ALLOW_PRIVATE_NETWORKS")) is not None:
            kwargs["allow_private_networks"] = _flag("ALLOW_PRIVATE_NETWORKS", value)
        if (value := get("MAX_PAYLOAD_BYTES")) is not None:
            kwargs["max_payload_bytes"] = _whole(
                "MAX_PAYLOAD_BYTES", _positive("MAX_PAYLOAD_BYTES", value)
            )
        if (value := get("MASTER_KEY")) is not None:
            kwargs["master_key"] = value
        if (value := get("CA_FILE")) is not None:
            kwargs["ca_file"] = _ca_file(value)
        for name, key in (
            ("WORKER_CONCURRENCY", "worker_concurrency"),
            ("ENDPOINT_CONCURRENCY", "endpoint_concurrency"),
        ):
            if (value := get(name)) is not None:
                kwargs[key] = _whole(name, _positive(name, value))
        if (value := get("LEASE_SECONDS")) is not None:
            kwargs["lease_seconds"] = _number("LEASE_SECONDS", value, minimum=MIN_LEASE_SECONDS)
        if (value := get("DELIVERY_PROCESSES")) is not None:
            count = _number("DELIVERY_PROCESSES", value, minimum=0.0)
            kwargs["delivery_processes"] = _whole("DELIVERY_PROCESSES", count)
        if (value := get("STARTUP_TIMEOUT")) is not None:
            kwargs["startup_timeout"] = _number("STARTUP_TIMEOUT", value, minimum=0.0)
        return cls(**kwargs)  # type: ignore[arg-type]


def parse_retry_schedule(text: str) -> tuple[float, ...]:
    """Parse ``"5,30,120"`` into delays; at most 10, each a number from 0 to 604800 (7 days).

    A blank value is the default schedule, as an empty one is: only spaces meant no retry at
    all, one attempt, which nobody asks for by leaving the variable blank."""
    if not text.strip():
        return DEFAULT_RETRY_SCHEDULE
    parts = [part.strip() for part in text.split(",")]
    delays = tuple(_number("RETRY_SCHEDULE", part, minimum=0.0) for part in parts)
    if len(delays) > MAX_RETRIES:
        raise SettingsError(f"{_PREFIX}RETRY_SCHEDULE has {len(delays)} delays; at most 10")
    for part, delay in zip(parts, delays, strict=True):
        if delay > MAX_RETRY_DELAY:
            raise SettingsError(
                f"{_PREFIX}RETRY_SCHEDULE: {part!r} is longer than the longest delay allowed,"
                f" {MAX_RETRY_DELAY:g} seconds (7 days)"
            )
    return delays


def _number(name: str, text: str, *, minimum: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{_PREFIX}{name}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise SettingsError(f"{_PREFIX}{name}: {text!r} must be a finite number >= {minimum:g}")
    return value


def _positive(name: str, text: str) -> float:
    value = _number(name, text, minimum=0.0)
    if value == 0:
        raise SettingsError(f"{_PREFIX}{name} must be greater than 0")
    return value


def _at_most(name: str, text: str, value: float, maximum: float) -> float:
    if value > maximum:
        raise SettingsError(f"{_PREFIX}{name}: {text!r} must be at most {maximum:g}")
    return value


def _ca_file(path: str) -> str:
    """``path``, once it reads as a PEM bundle of certificates.

    Checked here, before anything starts: it is first read when a worker builds its HTTPS
    client, after migrating, where a bad file was a traceback (or a crash-looping child).
    """
    try:
        with open(path, "rb") as file:
            pem = file.read()
        ssl.create_default_context().load_verify_locations(cadata=pem.decode("ascii"))
    except (OSError, ValueError, ssl.SSLError) as exc:  # (UnicodeError is a ValueError)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise SettingsError(
            f"{_PREFIX}CA_FILE: {path!r} is not a readable PEM bundle of certificates ({reason})"
        ) from None
    return path


def _whole(name: str, value: float) -> int:
    if value != int(value):
        raise SettingsError(f"{_PREFIX}{name} must be a whole number")
    return int(value)


def _flag(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{_PREFIX}{name}: {text!r} is not 1/0, true/false, yes/no or on/off")
