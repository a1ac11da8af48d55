"""The payload: Standard Webhooks shape, the published JSON Schema, and real sessions against it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import orjson
import pytest

from worker.enrich import enrich
from worker.payload import build_payload, payload_json_schema
from worker.schema import PUBLISHED, render
from worker.validate import parse_session
from workshop.sessions import make_session

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
TRIGGER = {
    "event_id": "evt_1",
    "type": "onboarding.completed",
    "created_at": 1716672462,
    "is_sandbox": False,
    "project_id": "p",
    "funnel_id": "f",
    "profile_id": "pro_1",
}


def test_published_schema_is_current() -> None:
    assert PUBLISHED.read_text() == render(), "run: python -m worker.schema > " + str(PUBLISHED)


def payload_for(session_id: str, trigger: dict[str, object] | None = None) -> dict[str, object]:
    body = orjson.dumps(make_session(session_id))
    raw, session = parse_session(body, session_id)
    return orjson.loads(build_payload(raw, enrich(session), trigger, NOW))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "session_id", [f"ses_schema{i}" for i in range(40)] + ["ses_x-anon", "ses_y-extra"]
)
def test_simulated_sessions_validate_against_the_published_schema(session_id: str) -> None:
    schema = json.loads(PUBLISHED.read_text())
    jsonschema.validate(payload_for(session_id, TRIGGER), schema)
    jsonschema.validate(payload_for(session_id), schema)


def test_shape() -> None:
    payload = payload_for("ses_shape", TRIGGER)
    assert payload["type"] == "session.enriched"
    assert payload["timestamp"] == "2026-01-02T03:04:05Z"
    data = payload["data"]
    assert isinstance(data, dict)
    assert set(data) == {"session", "enrichment", "trigger"}
    assert data["trigger"] == TRIGGER
    assert set(data["enrichment"]) >= {
        "created_at",
        "answers",
        "utm",
        "click_ids",
        "device",
        "geo",
        "locale",
    }


def test_session_is_delivered_whole_including_unknown_fields() -> None:
    document = make_session("ses_z-extra")
    payload = payload_for("ses_z-extra")
    assert payload["data"]["session"] == document  # type: ignore[index]


def test_session_is_spliced_in_byte_for_byte() -> None:
    """Parsing and serializing again would change values: a 20-digit integer became a float."""
    body = orjson.dumps(make_session("ses_exact"))[:-1] + (
        b',\n "big": 12345678901234567890123, "sci": 1E2,'
        b' "float": 0.1000000000000000055511, "emoji": "\\ud83e\\udd8a"}'
    )
    received, session = parse_session(body, "ses_exact")
    payload = build_payload(received, enrich(session), None, NOW)
    assert b'"session":' + body + b',"enrichment":' in payload
    assert json.loads(payload)["data"]["session"]["big"] == 12345678901234567890123


def test_schema_rejects_a_wrong_payload() -> None:
    schema = payload_json_schema()
    payload = payload_for("ses_wrong")
    payload["type"] = "session.other"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, schema)
