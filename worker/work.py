"""A unit of work on its way through the stages, as it travels inside a task message.

A unit is a session (delivered as ``session.enriched``) or a conversion: one FunnelFox
purchase or subscription event, delivered as its own type (``worker.conversions``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from worker.conversions import Conversion

SESSION_ENRICHED = "session.enriched"


@dataclass(frozen=True)
class Work:
    """One unit's id and what its next stage needs to know.

    ``session_id`` is the unit's id, which keys everything the product keeps about it
    (delivery records, claims, dead letters, the ledger, the webhook-id): the session id, or
    for a conversion (``event`` set) its event id; ``event.session_id`` is then its session.
    ``attempts`` counts the attempts already made at the stage this work is queued for;
    each stage (fetch, and each sink's delivery) counts its own.
    """

    session_id: str
    attempts: int = 0
    first_seen_at: float = field(default_factory=time.time)
    trigger: dict[str, Any] | None = None
    payload: bytes | None = None  # set once built, for the delivery stages
    event: Conversion | None = None

    @property
    def payload_type(self) -> str:
        """The ``type`` of the payload this unit becomes: what destinations are routed by."""
        return SESSION_ENRICHED if self.event is None else self.event.type

    @property
    def fetch_id(self) -> str | None:
        """The session to fetch from FunnelFox (None: a conversion without one)."""
        return self.session_id if self.event is None else self.event.session_id

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
        if self.event is not None:
            message["event"] = self.event.to_message()
        if self.payload is not None:
            message["payload"] = self.payload.decode()
        return message

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Work:
        """Read what ``to_message`` wrote."""
        payload = message.get("payload")
        event = message.get("event")
        return cls(
            session_id=message["id"],
            attempts=int(message.get("attempts", 0)),
            first_seen_at=float(message.get("first_seen_at") or time.time()),
            trigger=message.get("trigger"),
            payload=payload.encode() if isinstance(payload, str) else None,
            event=Conversion.from_message(event) if event is not None else None,
        )

    def context(self) -> dict[str, Any] | None:
        """What the ledger keeps while the unit is unfinished, to publish it again if its
        message is lost: the trigger, or for a conversion the trigger and the event."""
        if self.event is None:
            return self.trigger
        return {"trigger": self.trigger, "event": self.event.to_message()}

    @classmethod
    def from_context(cls, unit_id: str, first_seen_at: float, context: Any) -> Work:
        """The fetch to publish again from what ``context`` wrote (a bare trigger before
        conversions existed, which is still what a session's context is)."""
        if isinstance(context, dict) and "event" in context:
            return cls(
                unit_id,
                first_seen_at=first_seen_at,
                trigger=context.get("trigger"),
                event=Conversion.from_message(context["event"]),
            )
        return cls(unit_id, first_seen_at=first_seen_at, trigger=context)
