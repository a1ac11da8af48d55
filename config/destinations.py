"""Where enriched sessions go: one model per destination kind, named and typed.

Today they come from the shorthand variables (``WEBHOOK_URL``/``WEBHOOK_SECRET`` give the
destination ``webhook``, ``OUTPUT_STREAM`` the destination ``stream``); the name is the
destination's identity everywhere: its queue ``deliver.<name>``, its delivery records, its dead
letters' stage ``deliver:<name>`` and its metric label.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

NAME_PATTERN = r"^[a-z0-9_-]{1,32}$"


class WebhookDestination(BaseModel):
    """A signed POST per session (Standard Webhooks); every key signs each delivery."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["webhook"] = "webhook"
    name: str = Field(pattern=NAME_PATTERN)
    url: str
    secrets: tuple[SecretStr, ...] = Field(min_length=1)
    timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(100, ge=1)


class StreamDestination(BaseModel):
    """An XADD per session to a Redis stream, capped in length."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["redis_stream"] = "redis_stream"
    name: str = Field(pattern=NAME_PATTERN)
    stream: str = Field(min_length=1)
    maxlen: int = Field(100_000, ge=1)
    # None: the state Redis (REDIS_URL).
    redis_url: str | None = None


Destination = Annotated[WebhookDestination | StreamDestination, Field(discriminator="type")]
