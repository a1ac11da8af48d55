"""The delivered payload, in the Standard Webhooks shape, and its published JSON Schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from worker.enrich import Enrichment
from worker.models import Session, SessionBody
from worker.trigger import Trigger

EVENT_TYPE = "session.enriched"


class EnrichedData(BaseModel):
    """``data`` of the payload: the session whole, what we derived, and why it ran."""

    model_config = ConfigDict(extra="forbid")

    session: Session
    enrichment: Enrichment
    trigger: Trigger | None


class SessionEnriched(BaseModel):
    """The payload every sink receives."""

    model_config = ConfigDict(
        extra="forbid",
        title="session.enriched",
        json_schema_extra={"$id": "https://funnelfox-enricher/schemas/session.enriched.json"},
    )

    type: Literal["session.enriched"]
    timestamp: str
    data: EnrichedData


def rfc3339(moment: datetime) -> str:
    """UTC, second precision, with ``Z``: the form every timestamp in the payload takes."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_payload(
    session: SessionBody,
    enrichment: Enrichment,
    trigger: dict[str, Any] | None,
    now: datetime,
) -> bytes:
    """Serialize the payload once; every sink and every retry sends these same bytes.

    ``data.session`` is the body FunnelFox sent, already validated, spliced in byte for byte:
    fields this project does not know yet, and every value, reach the user untouched.
    """
    document = {
        "type": EVENT_TYPE,
        "timestamp": rfc3339(now),
        "data": {
            "session": orjson.Fragment(session.raw),
            "enrichment": enrichment.model_dump(mode="json"),
            "trigger": trigger,
        },
    }
    return orjson.dumps(document)


def payload_json_schema() -> dict[str, Any]:
    """The JSON Schema published in ``schemas/``; generated from the models above."""
    return SessionEnriched.model_json_schema(mode="serialization")
