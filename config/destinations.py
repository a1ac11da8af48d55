"""Where enriched sessions go: named destinations, each of one kind, each filtered on its own.

They come from ``DESTINATIONS_FILE`` (a TOML file of ``[[destinations]]`` tables) and from the
shorthand variables (``WEBHOOK_URL``/``WEBHOOK_SECRET`` give the destination ``webhook``,
``OUTPUT_STREAM`` the destination ``stream``). The name names its queue ``deliver.<name>``,
its delivery records, its dead letters' stage ``deliver:<name>`` and its metric label; a
webhook's webhook-ids hash its URL too (worker.sinks.webhook.WebhookSink.message_id).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from config.redis_url import check_redis_url
from config.sensitive import display_url, url_secrets

NAME_PATTERN = r"^[a-z0-9_-]{1,32}$"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class DestinationError(ValueError):
    """A destinations file that cannot be used; the message names the file, destination, field."""


def check_whsec(raw: str) -> None:
    """Raise ValueError unless ``raw`` is a Standard Webhooks secret (never echoing it)."""
    if not raw.startswith("whsec_"):
        raise ValueError("must start with 'whsec_' (a Standard Webhooks secret)")
    try:
        key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after 'whsec_' must be base64") from None
    if len(key) < 24:
        raise ValueError("the key must be at least 24 bytes (32 recommended)")


def check_http_url(url: str) -> None:
    """Raise ValueError unless ``url`` is one a webhook can be posted to (never echoing it:
    it may carry credentials). Caught at start, not on the first delivery, hours later."""
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ValueError("must not contain spaces or control characters (percent-encode them)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not url.lower().startswith(parts.scheme + "://"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("names no host, e.g. https://crm.example.com/hooks")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # urllib reads 0 as a port; nothing listens there
        raise ValueError("has a port that is not a number from 1 to 65535")


class Filters(BaseModel):
    """Which sessions a destination takes; a filter left out takes everything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    funnel_ids: tuple[str, ...] | None = None
    event_types: tuple[str, ...] | None = None
    sandbox: bool | None = None

    def take(self, funnel_id: str | None, event_type: str | None, sandbox: bool | None) -> bool:
        """Whether a session of this funnel, event type and sandbox flag goes here.

        A session run without a FunnelFox event (the console, backfill) has the type
        ``onboarding.completed`` for the filters and is not a sandbox one.
        """
        event_type = event_type or "onboarding.completed"
        return (
            (self.funnel_ids is None or funnel_id in self.funnel_ids)
            and (self.event_types is None or event_type in self.event_types)
            and (self.sandbox is None or bool(sandbox) == self.sandbox)
        )

    def describe(self) -> dict[str, Any]:
        """The filters that are set."""
        return self.model_dump(exclude_none=True, mode="json")


class _Base(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    funnel_ids: tuple[str, ...] | None = None
    event_types: tuple[str, ...] | None = None
    sandbox: bool | None = None
    # Deliveries a second to this destination for the whole fleet; unset = no limit.
    rate_limit_per_s: float | None = Field(None, gt=0)

    @property
    def filters(self) -> Filters:
        """Its filters as one value."""
        return Filters(
            funnel_ids=self.funnel_ids, event_types=self.event_types, sandbox=self.sandbox
        )

    @property
    def delivery_timeout_s(self) -> float | None:
        """How long one delivery may take by its own setting; None: it has no setting of its
        own (a stream's XADD is bounded by its Redis client's timeout)."""
        return None

    def sensitive_values(self) -> list[str]:
        """What of its settings must never reach a log line: each kind names its own."""
        return []


class WebhookDestination(_Base):
    """A signed POST per session (Standard Webhooks); every key signs each delivery."""

    type: Literal["webhook"] = "webhook"
    url: str
    secrets: tuple[SecretStr, ...] = Field(min_length=1)
    timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(100, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _one_secret_or_several(cls, data: Any) -> Any:
        if isinstance(data, dict) and "secret" in data:
            if "secrets" in data:
                raise ValueError("give secret or secrets, not both")
            data = {**data, "secrets": [data["secret"]]}
            del data["secret"]
        return data

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        check_http_url(value)
        return value

    @field_validator("secrets")
    @classmethod
    def _whsec(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for key in value:
            check_whsec(key.get_secret_value())
        return value

    def target(self) -> str:
        """Where it delivers, without credentials, query string or fragment (for listings)."""
        return display_url(self.url)

    @property
    def delivery_timeout_s(self) -> float | None:
        """Its request timeout."""
        return self.timeout_s

    def sensitive_values(self) -> list[str]:
        """Its signing keys, and its URL's password and query string."""
        return [key.get_secret_value() for key in self.secrets] + url_secrets(self.url)


class StreamDestination(_Base):
    """An XADD per session to a Redis stream, capped in length."""

    type: Literal["redis_stream"] = "redis_stream"
    stream: str = Field(min_length=1)
    maxlen: int = Field(100_000, ge=1)
    # None: the state Redis (REDIS_URL): then the XADD and the delivery record are one step.
    redis_url: str | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        # The same check as REDIS_URL's: the sink's client is built by the same code.
        if value is not None:
            check_redis_url(value)
        return value

    def target(self) -> str:
        """The stream (and its Redis, without credentials, when not the state Redis)."""
        if self.redis_url is None:
            return self.stream
        return display_url(self.redis_url) + " " + self.stream

    def sensitive_values(self) -> list[str]:
        """Its Redis URL's password and options, when it names a Redis of its own."""
        return url_secrets(self.redis_url)


# The one list of destination kinds: a new kind's model joins this union (and its sink joins
# worker.sinks.registry); KINDS and the file's error messages are read off it.
Destination = Annotated[WebhookDestination | StreamDestination, Field(discriminator="type")]
_DESTINATIONS = TypeAdapter(list[Destination])
KINDS: tuple[str, ...] = tuple(
    model.model_fields["type"].default for model in get_args(get_args(Destination)[0])
)


def substitute(value: Any, environ: Mapping[str, str], where: str) -> Any:
    """``${VAR}`` in every string replaced by the environment's value; a missing one is named."""
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise DestinationError(f"{where}: environment variable {name} is not set")
            return environ[name]

        return _VARIABLE.sub(lookup, value)
    if isinstance(value, list):
        return [substitute(item, environ, where) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, environ, f"{where}.{key}") for key, item in value.items()}
    return value


def load_destinations_file(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> list[Destination]:
    """Read and check a destinations file; DestinationError names what is wrong, and where."""
    environ = os.environ if environ is None else environ
    try:
        document = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise DestinationError(
            f"DESTINATIONS_FILE {path}: cannot read it ({exc.strerror})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise DestinationError(f"DESTINATIONS_FILE {path}: not valid TOML ({exc})") from None
    unknown = set(document) - {"destinations"}
    if unknown:
        raise DestinationError(f"{path}: unknown top-level key(s) {sorted(unknown)}")
    tables = document.get("destinations", [])
    if not isinstance(tables, list):
        raise DestinationError(f"{path}: destinations must be [[destinations]] tables")
    raw = [
        substitute(table, environ, f"{path}: destination {_label(table, n)}")
        for n, table in enumerate(tables, start=1)
    ]
    try:
        return _DESTINATIONS.validate_python(raw)
    except ValidationError as exc:
        raise DestinationError(describe(path, raw, exc)) from None


def describe(path: str | Path, raw: list[Any], exc: ValidationError) -> str:
    """Each problem as ``file: destination NAME, field: message``, never echoing a value."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = list(error["loc"])
        first = loc.pop(0) if loc and isinstance(loc[0], int) else None
        index = first if isinstance(first, int) else None
        if loc and loc[0] in KINDS:
            loc.pop(0)  # pydantic names the union member; the file's reader knows the type
        label = _label(raw[index], index + 1) if index is not None else "?"
        field = ".".join(str(part) for part in loc) or "type"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "union_tag_invalid":
            message = "unknown type: must be " + " or ".join(KINDS)
        problems.append(f"{path}: destination {label}, {field}: {message}")
    return "; ".join(problems)


def _label(table: Any, number: int) -> str:
    name = table.get("name") if isinstance(table, dict) else None
    return repr(name) if isinstance(name, str) else f"#{number}"


def check_unique(destinations: list[Destination], path: str | Path | None = None) -> None:
    """Raise DestinationError if two destinations share a name; ``path`` is DESTINATIONS_FILE,
    named like its other errors (a duplicate is always in it: the shorthands' names differ)."""
    seen: set[str] = set()
    for destination in destinations:
        if destination.name in seen:
            where = f"DESTINATIONS_FILE {path}" if path else "DESTINATIONS_FILE"
            raise DestinationError(
                f"{where}: destination {destination.name!r}, name: two destinations are named "
                f"{destination.name!r}: names must be unique "
                "(the shorthand variables use 'webhook' and 'stream')"
            )
        seen.add(destination.name)
