"""What every sink is: one method that delivers a batch and reports each item's fate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from worker.errors import StageError


@dataclass(frozen=True)
class Delivery:
    """One payload for one session, exactly as built by the enrich stage."""

    session_id: str
    payload: bytes


class Sink(ABC):
    """A destination. ``deliver`` never raises for one item: it returns that item's error."""

    name: str

    @abstractmethod
    async def deliver(self, deliveries: Sequence[Delivery]) -> list[StageError | None]:
        """Deliver each payload; the result holds None (delivered) or the error, in order."""
