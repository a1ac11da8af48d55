"""The delivered payloads, in the Standard Webhooks shape, and their published JSON Schemas.

Two kinds: ``session.enriched`` for a session, and a conversion (a FunnelFox purchase or
subscription event, delivered under its own type) carrying its session the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel

from worker.conversions import Conversion, ConversionType, SessionError
from worker.enrich import Enrichment
from worker.models import Session, SessionBody
from worker.trigger import Trigger

EVENT_TYPE = "session.enriched"
_SCHEMA_ROOT = "https://funnelfox-enricher/schemas/"


class EnrichedData(BaseModel):
    """``data`` of the payload: the session whole, what we derived, and why it ran."""

    model_config = ConfigDict(extra="forbid")

    session: Session
    enrichment: Enrichment
    trigger: Trigger | None


class SessionEnriched(BaseModel):
    """The payload of a session."""

    # Its schema's $id is set where it is published alone: inside Payload's $defs an $id
    # would make its own references resolve against it, and fail.
    model_config = ConfigDict(extra="forbid", title="session.enriched")

    type: Literal["session.enriched"]
    timestamp: str
    data: EnrichedData


class ConversionData(BaseModel):
    """``data`` of a conversion: its session as ``session.enriched`` has it, and the event."""

    model_config = ConfigDict(extra="forbid")

    session: Session | None = Field(
        description="The session the event names, as FunnelFox sent it; null with session_error."
    )
    enrichment: Enrichment | None = Field(description="As session.enriched; null with session.")
    session_error: SessionError | None = Field(
        description="Why session is null: the event names no session (no_session_id), "
        "names it with an id that breaks the id rules (invalid_session_id), or FunnelFox "
        "answered for good that it has no such session (not_found), refused the request "
        "(rejected), sent a body that is not a session (invalid_payload) or one over "
        "FUNNELFOX_MAX_BODY_BYTES (too_large)."
    )
    trigger: Trigger | None = Field(description="The event's context, as session.enriched.")
    event: JsonValue = Field(
        description="The FunnelFox event's data, whole. For subscription events FunnelFox "
        "documents entitlement, expires_at, session_id, starts_at, vendor, vendor_product_id, "
        "vendor_profile_id, vendor_subscription_id, vendor_transaction_id; purchase.completed's "
        "fields are not documented."
    )


class ConversionEvent(BaseModel):
    """The payload of a conversion: a FunnelFox purchase or subscription event."""

    model_config = ConfigDict(extra="forbid", title="conversion")

    type: ConversionType
    timestamp: str
    data: ConversionData


class Payload(RootModel[Annotated[SessionEnriched | ConversionEvent, Field(discriminator="type")]]):
    """Every payload this product delivers, told apart by ``type``."""

    model_config = ConfigDict(
        title="payload", json_schema_extra={"$id": _SCHEMA_ROOT + "payload.json"}
    )


@dataclass(frozen=True)
class Enriched:
    """A session as payloads carry it: FunnelFox's body byte for byte, and its enrichment as
    JSON, serialized once (and kept a while for the session's conversions to reuse)."""

    session: bytes
    enrichment: bytes


def enriched(session: SessionBody, enrichment: Enrichment) -> Enriched:
    """Serialize an enrichment beside its session's body."""
    return Enriched(session.raw, orjson.dumps(enrichment.model_dump(mode="json")))


def rfc3339(moment: datetime) -> str:
    """UTC, second precision, with ``Z``: the form every timestamp in the payload takes."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_payload(
    session: SessionBody,
    enrichment: Enrichment,
    trigger: dict[str, Any] | None,
    now: datetime,
) -> bytes:
    """A session's payload (see ``build_session_payload``)."""
    return build_session_payload(enriched(session, enrichment), trigger, now)


def build_session_payload(
    session: Enriched, trigger: dict[str, Any] | None, now: datetime
) -> bytes:
    """Serialize the payload once; every sink and every retry sends these same bytes.

    ``data.session`` is the body FunnelFox sent, already validated, spliced in byte for byte:
    fields this project does not know yet, and every value, reach the user untouched.
    """
    document = {
        "type": EVENT_TYPE,
        "timestamp": rfc3339(now),
        "data": {
            "session": orjson.Fragment(session.session),
            "enrichment": orjson.Fragment(session.enrichment),
            "trigger": trigger,
        },
    }
    return orjson.dumps(document)


def build_conversion_payload(
    conversion: Conversion,
    session: Enriched | None,
    session_error: str | None,
    trigger: dict[str, Any] | None,
    now: datetime,
) -> bytes:
    """A conversion's payload: typed as the FunnelFox event, its session spliced in as for
    ``session.enriched`` (or null, with the reason in ``session_error``), the event's data."""
    document = {
        "type": conversion.type,
        "timestamp": rfc3339(now),
        "data": {
            "session": None if session is None else orjson.Fragment(session.session),
            "enrichment": None if session is None else orjson.Fragment(session.enrichment),
            "session_error": None if session is not None else session_error,
            "trigger": trigger,
            "event": conversion.data,
        },
    }
    return orjson.dumps(document)


def session_enriched_json_schema() -> dict[str, Any]:
    """The JSON Schema of ``session.enriched`` alone."""
    schema = SessionEnriched.model_json_schema(mode="serialization")
    return {"$id": _SCHEMA_ROOT + "session.enriched.json", **schema}


def payload_json_schema() -> dict[str, Any]:
    """The JSON Schema of every payload type delivered (one of them, by ``type``)."""
    return Payload.model_json_schema(mode="serialization")
