"""Conversion events: FunnelFox's purchase and subscription webhooks, each its own unit of work.

A conversion is keyed by its event id everywhere a session is keyed by its session id (task
items, delivery records, claims, dead letters, the ledger, the webhook-id), so a session's
completion and its later subscription events are distinct deliveries.

Small and free of the enrichment: the web process reads events with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from worker.errors import InvalidSessionId
from worker.ids import check_session_id

ConversionType = Literal[
    "purchase.completed",
    "subscription.created",
    "subscription.trialing",
    "subscription.active",
    "subscription.cycle",
    "subscription.paused",
    "subscription.resumed",
    "subscription.cancelled",
    "subscription.unpaid",
]
CONVERSION_TYPES: frozenset[str] = frozenset(get_args(ConversionType))

# Why a conversion is delivered with ``data.session`` null. The first two are decided when the
# event arrives; the others are FunnelFox's permanent answer for the session (worker.errors).
SessionError = Literal[
    "no_session_id", "invalid_session_id", "not_found", "rejected", "invalid_payload", "too_large"
]
NO_SESSION_ID = "no_session_id"
INVALID_SESSION_ID = "invalid_session_id"


class InvalidConversion(ValueError):
    """A task item's ``event`` that cannot be a conversion."""


@dataclass(frozen=True)
class Conversion:
    """What a conversion's unit carries besides its event id: the event and its session."""

    type: str
    data: Any = None  # the FunnelFox event's ``data``, whole
    session_id: str | None = None
    # Set when session_id is None: no_session_id or invalid_session_id.
    session_error: str | None = None

    def to_message(self) -> dict[str, Any]:
        """The ``event`` of a task item (JSON-safe)."""
        message: dict[str, Any] = {"type": self.type, "data": self.data}
        if self.session_id is not None:
            message["session_id"] = self.session_id
        if self.session_error is not None:
            message["session_error"] = self.session_error
        return message

    @classmethod
    def from_message(cls, value: Any) -> Conversion:
        """Read what ``to_message`` wrote; InvalidConversion for anything else."""
        if not isinstance(value, dict):
            raise InvalidConversion(f"event must be an object, got {type(value).__name__}")
        kind = value.get("type")
        if not isinstance(kind, str) or not kind:
            raise InvalidConversion("event.type must be a non-empty string")
        data, raw_id = value.get("data"), value.get("session_id")
        if raw_id is None:
            error = value.get("session_error")
            return cls(kind, data, None, error if isinstance(error, str) else NO_SESSION_ID)
        session_id, error = resolve_session_id([raw_id])
        return cls(kind, data, session_id, error)


def is_conversion(event_type: str) -> bool:
    """Whether events of this type are delivered as conversions."""
    return event_type in CONVERSION_TYPES


def resolve_session_id(candidates: list[Any]) -> tuple[str | None, str | None]:
    """The first candidate present (not missing, null or empty), checked: (id, None), or
    (None, invalid_session_id) when it breaks the id rules, or (None, no_session_id)."""
    for candidate in candidates:
        if candidate is None or candidate == "":
            continue
        if not isinstance(candidate, str):
            return None, INVALID_SESSION_ID
        try:
            return check_session_id(candidate), None
        except InvalidSessionId:
            return None, INVALID_SESSION_ID
    return None, NO_SESSION_ID


def conversion_of(event_type: str, session_id: Any, extra: Mapping[str, Any]) -> Conversion:
    """The conversion in a FunnelFox event: its session is the envelope's ``session_id`` (as
    sent, unchecked), else ``data.session_id``, else ``profile.session_id``; ``extra`` holds
    the envelope's other fields (``data``, ``profile`` …) as they arrived."""
    data = extra.get("data")
    profile = extra.get("profile")
    found, error = resolve_session_id(
        [
            session_id,
            data.get("session_id") if isinstance(data, dict) else None,
            profile.get("session_id") if isinstance(profile, dict) else None,
        ]
    )
    return Conversion(type=event_type, data=data, session_id=found, session_error=error)
