"""A session on its way through the stages, as it travels inside a task message."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Work:
    """One session id and what its next stage needs to know.

    ``attempts`` counts the attempts already made at the stage this work is queued for;
    each stage (fetch, and each sink's delivery) counts its own.
    """

    session_id: str
    attempts: int = 0
    first_seen_at: float = field(default_factory=time.time)
    trigger: dict[str, Any] | None = None
    payload: bytes | None = None  # set once built, for the delivery stages

    def retried(self) -> Work:
        """This work after one more failed attempt."""
        return replace(self, attempts=self.attempts + 1)

    def to_message(self) -> dict[str, Any]:
        """A JSON-safe dict for a task argument (payloads are UTF-8 JSON text)."""
        message: dict[str, Any] = {"id": self.session_id, "first_seen_at": self.first_seen_at}
        if self.attempts:
            message["attempts"] = self.attempts
        if self.trigger is not None:
            message["trigger"] = self.trigger
        if self.payload is not None:
            message["payload"] = self.payload.decode()
        return message

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Work:
        """Read what ``to_message`` wrote."""
        payload = message.get("payload")
        return cls(
            session_id=message["id"],
            attempts=int(message.get("attempts", 0)),
            first_seen_at=float(message.get("first_seen_at") or time.time()),
            trigger=message.get("trigger"),
            payload=payload.encode() if isinstance(payload, str) else None,
        )
