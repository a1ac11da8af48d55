"""Settings from the environment and an optional ``.env``, grouped by what they configure.

Each group reads its own variables (``FUNNELFOX_*``, ``WEBHOOK_*``, ``RETRY_*`` …). Errors are
reported by the environment variable's name, since that is what a user has to fix.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.destinations import (
    Destination,
    DestinationError,
    StreamDestination,
    WebhookDestination,
    check_http_url,
    check_unique,
    check_whsec,
    load_destinations_file,
)
from config.redis_url import check_redis_url
from config.sensitive import url_secrets


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
        check_http_url(value)  # the shorthand becomes a destination: the same check
        return value

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        # Messages here never echo the value: it is a secret even when malformed.
        if value is None or value.get_secret_value().strip() == "":
            return None
        for key in value.get_secret_value().split():
            check_whsec(key)
        return value

    @property
    def secrets(self) -> tuple[SecretStr, ...]:
        """WEBHOOK_SECRET's keys: several, separated by spaces, during a rotation."""
        if self.secret is None:
            return ()
        return tuple(SecretStr(key) for key in self.secret.get_secret_value().split())


# Standard Webhooks' recommended schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (≈ 27.6 h).
STANDARD_WEBHOOKS_SCHEDULE = "5,300,1800,7200,18000,36000,36000"


class RetrySettings(BaseSettings):
    """One retry policy for every stage.

    RETRY_SCHEDULE_S (the delays before each retry) by default. Setting any of
    RETRY_BACKOFF_BASE_S, RETRY_BACKOFF_MAX_S or RETRY_MAX_ATTEMPTS switches to exponential
    backoff with full jitter instead, with those values (and the defaults of the others).
    """

    model_config = _config("RETRY_")

    schedule_s: str = STANDARD_WEBHOOKS_SCHEDULE
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    max_attempts: int = Field(8, ge=1)

    @field_validator("schedule_s")
    @classmethod
    def _delays(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @property
    def exponential(self) -> bool:
        """Whether a RETRY_BACKOFF_* or RETRY_MAX_ATTEMPTS variable chose exponential backoff."""
        return bool({"backoff_base_s", "backoff_max_s", "max_attempts"} & self.model_fields_set)

    @property
    def schedule(self) -> tuple[float, ...]:
        """RETRY_SCHEDULE_S as seconds."""
        return parse_schedule(self.schedule_s)


def parse_schedule(value: str) -> tuple[float, ...]:
    """``"5,300,1800"`` → (5.0, 300.0, 1800.0); ValueError naming what is wrong."""
    parts = [part.strip() for part in value.split(",")]
    try:
        delays = tuple(float(part) for part in parts)
    except ValueError:
        raise ValueError("must be comma-separated seconds, e.g. 5,300,1800") from None
    if not delays or any(not (delay > 0) for delay in delays):
        raise ValueError("every delay must be a number of seconds above 0")
    return delays


class RedisSettings(BaseSettings):
    """REDIS_URL: what every process reads, and all that Flower reads of these settings."""

    model_config = _config("")

    redis_url: str = "redis://localhost:6379/0"

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        check_redis_url(value)
        return value


class Settings(RedisSettings):
    """Everything a process of this project reads from its environment."""

    model_config = _config("")

    # Replication to a standby is asynchronous: a failover loses the primary's last writes.
    # With N > 0, an acknowledgement (the ingress's 202 or 200 duplicate, `enqueue`'s exit 0)
    # waits until N replicas hold the message (WAIT), and fails (503, exit 1) if they do not
    # within REDIS_WAIT_TIMEOUT_S. 0 = acknowledge once the primary has it.
    redis_wait_replicas: int = Field(0, ge=0)
    redis_wait_timeout_s: float = Field(0.25, gt=0, le=10)
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
    # How long a finished session's ledger entry is kept; unset: as long as DEDUPE_TTL_S.
    ledger_ttl_s: int | None = Field(None, ge=1)
    # A session neither finished nor scheduled that made no progress for this long is
    # published again by the reconciler (every worker runs one; one at a time).
    reconcile_after_s: int = Field(300, ge=1)
    # A TOML file of [[destinations]] (see README, Destinations); with or without the
    # shorthands WEBHOOK_URL / OUTPUT_STREAM, as long as the names stay unique.
    destinations_file: str | None = None
    # A destination whose deliveries fail this many times in a row is paused; one probe
    # delivery every BREAKER_PROBE_S decides when it resumes.
    breaker_failures: int = Field(20, ge=1)
    breaker_probe_s: float = Field(30.0, gt=0)
    # How long a session's built enrichment is kept after a run started by a FunnelFox event,
    # so its conversions (purchase and subscription events) need no FunnelFox request;
    # 0: conversions always fetch their session. Memory: ~1.4 kB a session (README).
    enrichment_cache_ttl_s: int = Field(3600, ge=0)
    # Off only to measure what the ledger costs (make bench): without it, retries wait in the
    # broker and lost messages are not noticed.
    ledger_enabled: bool = True
    # A fetch makes each session's first delivery itself, without a deliver message (see
    # worker/inline.py); false: every delivery goes through its destination's queue.
    inline_delivery: bool = True
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

    @cached_property
    def destinations(self) -> list[Destination]:
        """Where sessions are delivered: the shorthands first, then DESTINATIONS_FILE's."""
        found: list[Destination] = []
        if self.webhook.url is not None and self.webhook.secret is not None:
            found.append(
                WebhookDestination(
                    name="webhook",
                    url=self.webhook.url,
                    secrets=self.webhook.secrets,
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
        if self.destinations_file:
            found += load_destinations_file(self.destinations_file)
        check_unique(found, self.destinations_file)
        return found

    @property
    def ledger_ttl(self) -> int:
        """LEDGER_TTL_S, or DEDUPE_TTL_S when unset."""
        return self.ledger_ttl_s or self.dedupe_ttl_s

    @property
    def slowest_delivery_s(self) -> float:
        """The longest delivery timeout of any destination that sets one (WEBHOOK_TIMEOUT_S
        when none does)."""
        timeouts = [d.delivery_timeout_s for d in self.destinations]
        return max((t for t in timeouts if t is not None), default=self.webhook.timeout_s)

    def sensitive_values(self) -> list[str]:
        """Every secret this configuration holds, its URLs' credentials and every
        destination's (DESTINATIONS_FILE's included): what a log line must never show."""
        found = [s.get_secret_value() for s in (self.funnelfox.secret, self.webhook.secret) if s]
        found += url_secrets(self.webhook.url) + url_secrets(self.redis_url)
        for destination in self.destinations:
            found += destination.sensitive_values()
        return found

    @property
    def enabled_sinks(self) -> list[str]:
        """The names of the destinations this configuration delivers to, in delivery order."""
        return [destination.name for destination in self.destinations]

    def check_sinks(self) -> None:
        """Refuse a configuration that would deliver nowhere or unsigned, or a bad file."""
        if self.webhook.url is not None and self.webhook.secret is None:
            raise ConfigError("WEBHOOK_SECRET is required when WEBHOOK_URL is set")
        try:
            destinations = self.destinations
        except DestinationError as exc:
            raise ConfigError(str(exc)) from None
        if not destinations:
            raise ConfigError(
                "no sink is on: set WEBHOOK_URL or OUTPUT_STREAM (or both), or DESTINATIONS_FILE"
            )

    def check_for_worker(self) -> None:
        """What a worker needs beyond the common settings, checked before it starts."""
        self.check_sinks()
        if self.funnelfox.secret is None or not self.funnelfox.secret.get_secret_value():
            raise ConfigError("FUNNELFOX_SECRET is required to fetch sessions")


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


def load_redis_url() -> str:
    """REDIS_URL alone, checked; ConfigError names it. For a process that needs nothing else
    of these settings (Flower), so it starts without a worker's variables."""
    try:
        return RedisSettings().redis_url
    except ValidationError as exc:
        raise ConfigError(describe_invalid(RedisSettings, exc)) from None


def describe_invalid(model: type[BaseSettings], exc: ValidationError) -> str:
    """What is wrong, by variable name."""
    # Only the location and message: pydantic's default text would echo the input value.
    problems = [
        f"{_env_name(model, err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()
    ]
    return "invalid configuration: " + "; ".join(problems)
