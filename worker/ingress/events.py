"""The FunnelFox webhook envelope, as far as the ingress reads it, and the trigger it becomes."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.conversions import is_conversion
from worker.ids import SESSION_ID_PATTERN
from worker.trigger import Trigger

# Event ids become part of a Redis key: the same opaque alphabet as session ids.
EVENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"

_Context = Annotated[str, Field(max_length=256)]


class Event(BaseModel):
    """A FunnelFox webhook event; fields the ingress does not use pass through unread."""

    model_config = ConfigDict(extra="allow", title="FunnelFoxEvent")

    id: Annotated[str, Field(pattern=EVENT_ID_PATTERN, description="The event id (evt_…).")]
    type: Annotated[str, Field(min_length=1, max_length=128, examples=["onboarding.completed"])]
    session_id: Annotated[
        str | None,
        Field(
            # The same rule as worker.ids.check_session_id, which still has the last word.
            pattern=f"^{SESSION_ID_PATTERN.pattern}$",
            description="Required for the session event types that start the pipeline "
            "(INGRESS_EVENT_TYPES); a purchase or subscription event may name its session "
            "here, in data.session_id or in profile.session_id, or not at all. A purchase or "
            "subscription event is never refused for it: an empty string counts as absent, "
            "and any other value that breaks this rule is delivered with data.session_error "
            "invalid_session_id.",
            examples=["ses_01HZX3P7Q0V1M2N3B4C5D6E7F8"],
        ),
    ] = None
    created_at: Annotated[int | None, Field(description="Unix seconds.")] = None
    is_sandbox: bool | None = None
    project_id: _Context | None = None
    funnel_id: _Context | None = None
    profile_id: _Context | None = None

    def trigger(self) -> dict[str, Any]:
        """The context that travels with the task and ends as ``data.trigger``."""
        return Trigger(
            event_id=self.id,
            type=self.type,
            created_at=self.created_at,
            is_sandbox=self.is_sandbox,
            project_id=self.project_id,
            funnel_id=self.funnel_id,
            profile_id=self.profile_id,
        ).model_dump(mode="json")


def parse_event(document: Any) -> tuple[Event, Any]:
    """The event in a webhook body, and its envelope's ``session_id`` as sent (ValidationError
    when the body is not an event).

    A conversion's envelope ``session_id`` is only the first of three places its session may
    be named, read like the other two (worker.conversions.resolve_session_id: empty counts as
    absent, a bad one is delivered as invalid_session_id), so the model's strict rule, which
    refuses the whole body, is kept for the session events alone.
    """
    if not _names_a_conversion(document):
        event = Event.model_validate(document, strict=True)
        return event, event.session_id
    rest = dict(document)
    envelope_session_id = rest.pop("session_id", None)
    return Event.model_validate(rest, strict=True), envelope_session_id


def _names_a_conversion(document: Any) -> bool:
    if not isinstance(document, dict):
        return False
    kind = document.get("type")
    return isinstance(kind, str) and is_conversion(kind)


def problems(exc: ValidationError) -> list[dict[str, Any]]:
    """Where and why a body is not an event; without the offending values."""
    return [
        {"loc": [str(part) for part in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
