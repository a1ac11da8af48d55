"""Settings from the environment and an optional ``.env``, grouped by what they configure.

Each group reads its own variables (``FUNNELFOX_*``, ``WEBHOOK_*``, ``RETRY_*`` …). Errors are
reported by the environment variable's name, since that is what a user has to fix.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.destinations import Destination, StreamDestination, WebhookDestination


class ConfigError(Exception):
    """The configuration is wrong; the message names the variable to fix."""


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )


class FunnelFoxSettings(BaseSettings):
    """The FunnelFox Public API: where it is and how we talk to it."""

    model_config = _config("FUNNELFOX_")

    api_url: str = "https://api.funnelfox.io/public/v1"
    secret: SecretStr | None = None
    timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(100, ge=1)
    # A session's body travels inside delivery messages (a batch of them per message): a larger
    # answer is dead-lettered too_large, and reading stops there.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # One limit for the whole fleet, enforced through Redis; unset = no limit.
    rate_limit_per_s: float | None = Field(None, gt=0)

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class WebhookSettings(BaseSettings):
    """The downstream webhook sink; off while WEBHOOK_URL is unset."""

    model_config = _config("WEBHOOK_")

    url: str | None = None
    secret: SecretStr | None = None
    timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(100, ge=1)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        # Messages here never echo the value: it is a secret even when malformed.
        if value is None or value.get_secret_value() == "":
            return None
        raw = value.get_secret_value()
        if not raw.startswith("whsec_"):
            raise ValueError("must start with 'whsec_' (a Standard Webhooks secret)")
        try:
            key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the part after 'whsec_' must be base64") from None
        if len(key) < 24:
            raise ValueError("the key must be at least 24 bytes (32 recommended)")
        return value


class RetrySettings(BaseSettings):
    """One retry policy for every stage: exponential backoff with full jitter."""

    model_config = _config("RETRY_")

    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    max_attempts: int = Field(8, ge=1)


class Settings(BaseSettings):
    """Everything a process of this project reads from its environment."""

    model_config = _config("")

    redis_url: str = "redis://localhost:6379/0"
    output_stream: str | None = None
    output_stream_maxlen: int = Field(100_000, ge=1)
    # Measured on 2 cores (sessions/s at 0/50 ms upstream, summed RSS): 1 process 498/366 at
    # 170 MiB, 2 759/520 at 270 MiB, 3 911/639 at 369 MiB. One process per core: past that
    # each adds ~100 MiB for less and less.
    worker_concurrency: int = Field(2, ge=1)
    # Measured (make bench, 2 cores): 100 ids a message beat 50 by ~35% at 0 ms and ~50% at
    # 50 ms upstream latency; a batch is fetched concurrently, so it also bounds concurrency.
    worker_batch_size: int = Field(100, ge=1, le=1000)
    visibility_timeout_s: int = Field(3600, ge=1)
    # Unset: derived from the request timeouts (see worker.celeryconfig.task_time_limit_s).
    task_time_limit_s: int | None = Field(None, ge=1)
    dedupe_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    # Off: no log line names an IP address (uvicorn's access log would) unless opted in.
    log_client_ips: bool = False

    funnelfox: FunnelFoxSettings = Field(default_factory=FunnelFoxSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)

    @field_validator("output_stream")
    @classmethod
    def _blank_is_off(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        check_redis_url(value)
        return value

    @property
    def destinations(self) -> list[Destination]:
        """Where sessions are delivered, in delivery order."""
        found: list[Destination] = []
        if self.webhook.url is not None and self.webhook.secret is not None:
            found.append(
                WebhookDestination(
                    name="webhook",
                    url=self.webhook.url,
                    secrets=(self.webhook.secret,),
                    timeout_s=self.webhook.timeout_s,
                    max_connections=self.webhook.max_connections,
                )
            )
        if self.output_stream is not None:
            found.append(
                StreamDestination(
                    name="stream", stream=self.output_stream, maxlen=self.output_stream_maxlen
                )
            )
        return found

    @property
    def enabled_sinks(self) -> list[str]:
        """The names of the destinations this configuration delivers to, in delivery order."""
        return [destination.name for destination in self.destinations]

    def check_sinks(self) -> None:
        """Refuse a configuration that would deliver nowhere or unsigned."""
        if self.webhook.url is None and self.output_stream is None:
            raise ConfigError("no sink is on: set WEBHOOK_URL or OUTPUT_STREAM (or both)")
        if self.webhook.url is not None and self.webhook.secret is None:
            raise ConfigError("WEBHOOK_SECRET is required when WEBHOOK_URL is set")

    def check_for_worker(self) -> None:
        """What a worker needs beyond the common settings, checked before it starts."""
        self.check_sinks()
        if self.funnelfox.secret is None or not self.funnelfox.secret.get_secret_value():
            raise ConfigError("FUNNELFOX_SECRET is required to fetch sessions")
        if self.retry.backoff_max_s >= self.visibility_timeout_s:
            # A Redis broker redelivers any message still unacknowledged after the visibility
            # timeout, including one a worker holds for a later retry: duplicates (celery#2599).
            raise ConfigError(
                f"RETRY_BACKOFF_MAX_S ({self.retry.backoff_max_s:g}) must be below "
                f"VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s})"
            )


REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> None:
    """Raise ValueError saying what is wrong with a Redis URL (never echoing its password)."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        shown = f"'{parts.scheme}://'" if "://" in url else "no scheme"
        raise ValueError(
            f"must start with redis://, rediss:// or unix:// ({shown} given), "
            "e.g. redis://localhost:6379/0"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("names no host, e.g. redis://localhost:6379/0")
    try:
        parts.port  # noqa: B018 - urllib validates the port when it is read
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    db = parse_qs(parts.query).get("db", [""])[0]
    if parts.scheme != "unix":
        db = parts.path.lstrip("/") or db
    if db and not (db.isdigit() and int(db) < 2**16):
        raise ValueError(f"has a database index that is not a whole number ({db!r})")


def _env_name(model: type[BaseSettings], loc: tuple[Any, ...]) -> str:
    prefix = str(model.model_config.get("env_prefix") or "")
    return (prefix + "_".join(str(part) for part in loc)).upper()


def load_settings(*, require_sink: bool = True, **overrides: Any) -> Settings:
    """Read and check the settings; a bad value raises ConfigError naming its variable.

    ``require_sink=False`` is for processes that deliver nothing themselves (the ingress).
    """
    groups: dict[str, Any] = {}
    for field, model in (
        ("funnelfox", FunnelFoxSettings),
        ("webhook", WebhookSettings),
        ("retry", RetrySettings),
    ):
        try:
            groups[field] = overrides.pop(field, None) or model()
        except ValidationError as exc:
            raise ConfigError(describe_invalid(model, exc)) from None
    try:
        settings = Settings(**groups, **overrides)
    except ValidationError as exc:
        raise ConfigError(describe_invalid(Settings, exc)) from None
    if require_sink:
        settings.check_sinks()
    return settings


def describe_invalid(model: type[BaseSettings], exc: ValidationError) -> str:
    """What is wrong, by variable name."""
    # Only the location and message: pydantic's default text would echo the input value.
    problems = [
        f"{_env_name(model, err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()
    ]
    return "invalid configuration: " + "; ".join(problems)
