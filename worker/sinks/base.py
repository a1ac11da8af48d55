"""What every sink is: one method that delivers a batch and reports each item's fate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Self

import redis.asyncio as aioredis

from config.destinations import Filters
from worker.http import HttpSession

if TYPE_CHECKING:
    from config.destinations import Destination


@dataclass(frozen=True)
class Outcome:
    """How one delivery attempt went: None is success. Its time feeds the latency metric.

    ``error`` is a StageError, or any other exception for a bug; never raised for one item.
    """

    error: BaseException | None
    duration_s: float


@dataclass(frozen=True)
class Delivery:
    """One payload for one unit of work, exactly as built by the enrich stage."""

    session_id: str  # "" for a conversion without a session
    payload: bytes
    event_id: str | None = None  # a conversion's: its identity downstream (webhook-id)


class Resources(Protocol):
    """What the worker process lends a sink: pooled clients, shared across sinks."""

    def http_session(self, *, timeout_s: float, max_connections: int) -> HttpSession:
        """A pooled HTTP client of this process."""

    def redis_for(self, url: str | None) -> aioredis.Redis:
        """A Redis client for ``url``; None is the worker's own state Redis."""

    @property
    def dedupe_ttl_s(self) -> int:
        """How long a delivery record lives (DEDUPE_TTL_S)."""


class Sink(ABC):
    """A destination. ``deliver`` never raises for one item: it returns that item's outcome."""

    name: str
    # Which sessions it takes (all by default); set from its destination's settings.
    filters: Filters = Filters()

    @classmethod
    def from_destination(cls, destination: Destination, resources: Resources) -> Self:
        """Build the sink for one configured destination (every registered kind has one)."""
        raise NotImplementedError(f"{cls.__name__} is not a registered kind of sink")

    @abstractmethod
    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Deliver each payload; one Outcome per delivery, in order."""
