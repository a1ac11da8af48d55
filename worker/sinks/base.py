"""What every sink is: one method that delivers a batch and reports each item's fate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from worker.errors import StageError


@dataclass(frozen=True)
class Outcome:
    """How one delivery attempt went: None is success. Its time feeds the latency metric."""

    error: StageError | None
    duration_s: float


@dataclass(frozen=True)
class Delivery:
    """One payload for one session, exactly as built by the enrich stage."""

    session_id: str
    payload: bytes


class Sink(ABC):
    """A destination. ``deliver`` never raises for one item: it returns that item's outcome."""

    name: str

    @abstractmethod
    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Deliver each payload; one Outcome per delivery, in order."""
