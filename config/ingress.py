"""Ingress settings: the ``INGRESS_*`` variables, plus the shared ones it reads from ``config``."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.settings import ConfigError, Settings, describe_invalid, load_settings

DEFAULT_EVENT_TYPES = "onboarding.completed"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class IngressSettings(BaseSettings):
    """What only the web process reads."""

    model_config = SettingsConfigDict(
        env_prefix="INGRESS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Falls back to FUNNELFOX_SECRET: FunnelFox sends the project's one secret key.
    secret: SecretStr | None = None
    event_types: str = DEFAULT_EVENT_TYPES
    accept_sandbox: bool = True
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1)
    # Bounds every broker and Redis call an answer waits for, so a dead broker is a quick 503.
    broker_timeout_s: float = Field(0.5, gt=0, le=10)
    # Accepted events wait this long for others and go to the broker as one message: each
    # message costs a worker a few ms whatever it carries. 0 = one message per event.
    # Measured (make bench, live, 2 cores): 5/20/50 ms sustained 100/500/500 events/s.
    batch_window_ms: float = Field(50.0, ge=0, le=1000)
    batch_max: int = Field(100, ge=1, le=1000)

    @field_validator("event_types")
    @classmethod
    def _some_types(cls, value: str) -> str:
        if not _split(value):
            raise ValueError("must name at least one event type (comma-separated)")
        return value


@dataclass(frozen=True)
class IngressConfig:
    """Everything the ingress app needs, resolved and checked."""

    secret: SecretStr
    redis_url: str
    event_types: frozenset[str] = frozenset({DEFAULT_EVENT_TYPES})
    accept_sandbox: bool = True
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Written once, in the models that read them.
    dedupe_ttl_s: int = Settings.model_fields["dedupe_ttl_s"].default
    broker_timeout_s: float = IngressSettings.model_fields["broker_timeout_s"].default
    batch_window_ms: float = IngressSettings.model_fields["batch_window_ms"].default
    batch_max: int = IngressSettings.model_fields["batch_max"].default
    log_format: str = Settings.model_fields["log_format"].default
    log_level: str = Settings.model_fields["log_level"].default
    log_client_ips: bool = Settings.model_fields["log_client_ips"].default
    reconcile_after_s: int = Settings.model_fields["reconcile_after_s"].default
    # An acknowledgement waits for this many replicas (REDIS_WAIT_REPLICAS; 0 = not at all).
    wait_replicas: int = Settings.model_fields["redis_wait_replicas"].default
    wait_timeout_s: float = Settings.model_fields["redis_wait_timeout_s"].default


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def load_config() -> IngressConfig:
    """Read the environment; ConfigError names the variable to fix."""
    try:
        ingress = IngressSettings()
    except ValidationError as exc:
        raise ConfigError(describe_invalid(IngressSettings, exc)) from None
    common = _common_settings()
    secret = ingress.secret or common.funnelfox.secret
    if secret is None or not secret.get_secret_value():
        raise ConfigError(
            "no webhook secret: set INGRESS_SECRET, or FUNNELFOX_SECRET (the project's secret "
            "key, which FunnelFox sends in the Fox-Secret-Key header)"
        )
    if common.redis_wait_replicas and common.redis_wait_timeout_s >= ingress.broker_timeout_s:
        raise ConfigError(
            f"REDIS_WAIT_TIMEOUT_S ({common.redis_wait_timeout_s:g}) must be below "
            f"INGRESS_BROKER_TIMEOUT_S ({ingress.broker_timeout_s:g}), which bounds every "
            "Redis call of the ingress"
        )
    return IngressConfig(
        secret=secret,
        redis_url=common.redis_url,
        event_types=frozenset(_split(ingress.event_types)),
        accept_sandbox=ingress.accept_sandbox,
        max_body_bytes=ingress.max_body_bytes,
        dedupe_ttl_s=common.dedupe_ttl_s,
        broker_timeout_s=ingress.broker_timeout_s,
        batch_window_ms=ingress.batch_window_ms,
        batch_max=ingress.batch_max,
        wait_replicas=common.redis_wait_replicas,
        wait_timeout_s=common.redis_wait_timeout_s,
        log_format=common.log_format,
        log_level=common.log_level,
        log_client_ips=common.log_client_ips,
        reconcile_after_s=common.reconcile_after_s,
    )


def _common_settings() -> Settings:
    # The ingress delivers nothing itself, so it does not insist on a sink as workers do.
    return load_settings(require_sink=False)
