"""The payload: Standard Webhooks shape, the published JSON Schema, and real sessions against it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import get_args

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import errors
from worker.conversions import CONVERSION_TYPES, Conversion, SessionError
from worker.enrich import enrich
from worker.payload import (
    build_conversion_payload,
    build_payload,
    enriched,
    payload_json_schema,
)
from worker.schema import PUBLISHED, PUBLISHED_EVERY_TYPE, render
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


# Checked once here; jsonschema.validate() checks the schema itself again on every call.
VALIDATOR = jsonschema.Draft202012Validator(json.loads(PUBLISHED.read_text()))


EVERY_TYPE = jsonschema.Draft202012Validator(json.loads(PUBLISHED_EVERY_TYPE.read_text()))


def test_published_schema_is_current() -> None:
    assert PUBLISHED.read_text() == render(), "run: python -m worker.schema > " + str(PUBLISHED)
    assert PUBLISHED_EVERY_TYPE.read_text() == render("payload"), (
        "run: python -m worker.schema payload > " + str(PUBLISHED_EVERY_TYPE)
    )


def payload_for(session_id: str, trigger: dict[str, object] | None = None) -> dict[str, object]:
    body = orjson.dumps(make_session(session_id))
    raw, session = parse_session(body, session_id)
    return orjson.loads(build_payload(raw, enrich(session), trigger, NOW))  # type: ignore[no-any-return]


SHAPED = [
    "ses_x-anon",
    "ses_y-extra",
    "ses_s-objreply",
    "ses_s-boolreply",
    "ses_s-nouseragent",
    "ses_s-noattributes",
    "ses_s-nullattrs",
    "ses_s-nullfields",
    "ses_s-bare",
    "ses_s-anon-objreply-boolreply",
]


@pytest.mark.parametrize("session_id", [f"ses_schema{i}" for i in range(40)] + SHAPED)
def test_simulated_sessions_validate_against_the_published_schema(session_id: str) -> None:
    VALIDATOR.validate(payload_for(session_id, TRIGGER))
    VALIDATOR.validate(payload_for(session_id))
    EVERY_TYPE.validate(payload_for(session_id, TRIGGER))


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


@pytest.mark.parametrize("session_id", SHAPED)
def test_every_shape_is_delivered_as_sent(session_id: str) -> None:
    payload = payload_for(session_id)
    assert payload["data"]["session"] == make_session(session_id)  # type: ignore[index]


GEO_FIELDS = (
    "country_code",
    "country_name",
    "region_code",
    "city",
    "postal_code",
    "timezone",
    "utc_offset",
)
NULL_PARTS = {"answers": None, "utm": None, "click_ids": None, "device": None, "geo": None}


@pytest.mark.parametrize(
    ("session_id", "expected"),
    [
        ("ses_s-objreply", {"answers.height.height_picker": {"value": 180, "unit": "cm"}}),
        ("ses_s-boolreply", {"answers.consent.terms_checkbox": True}),
        ("ses_s-nouseragent", {"device": None}),
        ("ses_s-noattributes", {"geo": None}),
        ("ses_s-nullattrs", {"geo": dict.fromkeys(GEO_FIELDS)}),
        ("ses_s-nullfields", {**NULL_PARTS, "locale": {"language": None, "region": None}}),
        ("ses_s-bare", {**NULL_PARTS, "locale": {"language": None, "region": None}}),
    ],
)
def test_shapes_enrich_what_they_can(session_id: str, expected: dict[str, object]) -> None:
    enrichment = payload_for(session_id)["data"]["enrichment"]  # type: ignore[index]
    for path, value in expected.items():
        got = enrichment
        for key in path.split("."):
            got = got[key]
        assert got == value, path
        assert type(got) is type(value), path  # True is not 1


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


def test_a_lone_surrogate_is_delivered_as_sent() -> None:
    """JSON orjson refuses to read: the body is still spliced in, the enrichment is mended."""
    body = orjson.dumps(make_session("ses_cut"))[:-1] + (
        b',"replies":[{"screen_id":"name","element_id":"name_input","value":"Zo\\ud83d"}]}'
    )
    received, session = parse_session(body, "ses_cut")
    payload = build_payload(received, enrich(session), None, NOW)
    assert b'"session":' + body + b',"enrichment":' in payload
    data = json.loads(payload)["data"]
    assert data["session"]["replies"][0]["value"] == "Zo\ud83d"
    assert data["enrichment"]["answers"] == {"name": {"name_input": "Zo\ufffd"}}


# Any JSON value orjson can write (integers within 64 bits, no NaN).
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ATTRIBUTE_KEYS = ("city", "country", "ip", "postal_code", "region_code", "locale_code", "timezone")
PARAM_KEYS = ("utm_source", "utm_medium", "utm_term", "fbclid", "gclid", "ScCid")
TEXT = st.text(max_size=40)
# Each field missing, shaped as FunnelFox documents it (with odd values inside), or anything.
OPTIONAL = {
    "funnel_id": TEXT | JSON,
    "profile_id": TEXT | JSON,
    "origin": TEXT | JSON,
    "user_agent": st.sampled_from([make_session(f"ses_ua{i}")["user_agent"] for i in range(9)])
    | TEXT
    | JSON,
    "attributes": st.dictionaries(st.sampled_from(ATTRIBUTE_KEYS) | TEXT, TEXT | JSON) | JSON,
    "query": TEXT | JSON,
    "query_params": st.dictionaries(st.sampled_from(PARAM_KEYS) | TEXT, TEXT | JSON) | JSON,
    "replies": st.lists(
        st.fixed_dictionaries(
            {"screen_id": TEXT, "element_id": TEXT}, optional={"value": JSON, "extra": JSON}
        )
        | JSON,
        max_size=4,
    )
    | JSON,
    "experiment_id": TEXT | JSON,
    "locale": TEXT | JSON,
    "fox_future_field": JSON,
}
SESSIONS = st.fixed_dictionaries(
    {"id": st.just("ses_any"), "created_at": st.integers(0, 253402300799)}, optional=OPTIONAL
)


@given(SESSIONS)
@settings(max_examples=150, deadline=None)
def test_any_session_with_id_and_created_at_is_delivered_and_fits_the_schema(
    document: dict[str, object],
) -> None:
    body = orjson.dumps(document)
    received, session = parse_session(body, "ses_any")
    payload = json.loads(build_payload(received, enrich(session), None, NOW))
    VALIDATOR.validate(payload)
    assert payload["data"]["session"] == document


def test_schema_rejects_a_wrong_payload() -> None:
    schema = payload_json_schema()
    payload = payload_for("ses_wrong")
    payload["type"] = "session.other"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, schema)


# -- conversions: a FunnelFox purchase or subscription event, delivered under its own type ------

SUBSCRIPTION = {
    "entitlement": "premium",
    "expires_at": "2026-02-01T00:00:00Z",
    "session_id": "ses_conv",
    "starts_at": "2026-01-01T00:00:00Z",
    "vendor": "stripe",
    "vendor_product_id": "prod_1",
    "vendor_profile_id": "cus_1",
    "vendor_subscription_id": "sub_1",
    "vendor_transaction_id": "txn_1",
}


def conversion_for(
    event_type: str,
    session_id: str | None,
    data: object = None,
    session_error: str | None = None,
) -> dict[str, object]:
    trigger = {**TRIGGER, "event_id": "evt_conv", "type": event_type}
    conversion = Conversion(event_type, data, session_id)
    session = None
    if session_id is not None:
        raw, model = parse_session(orjson.dumps(make_session(session_id)), session_id)
        session = enriched(raw, enrich(model))
    payload = build_conversion_payload(conversion, session, session_error, trigger, NOW)
    return orjson.loads(payload)  # type: ignore[no-any-return]


@pytest.mark.parametrize("event_type", sorted(CONVERSION_TYPES))
def test_every_conversion_type_is_delivered_as_itself_and_fits_the_schema(
    event_type: str,
) -> None:
    payload = conversion_for(event_type, "ses_conv", SUBSCRIPTION)
    EVERY_TYPE.validate(payload)
    assert payload["type"] == event_type
    assert payload["timestamp"] == "2026-01-02T03:04:05Z"
    data = payload["data"]
    assert isinstance(data, dict)
    assert list(data) == ["session", "enrichment", "session_error", "trigger", "event"]
    assert data["event"] == SUBSCRIPTION
    assert data["session_error"] is None
    assert data["trigger"]["type"] == event_type
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(payload)  # session.enriched's own schema is that type alone


def test_a_conversion_carries_its_session_as_session_enriched_does() -> None:
    session_payload = payload_for("ses_conv-extra", TRIGGER)
    conversion = conversion_for("subscription.active", "ses_conv-extra", SUBSCRIPTION)
    assert conversion["data"]["session"] == session_payload["data"]["session"]  # type: ignore[index]
    assert conversion["data"]["enrichment"] == session_payload["data"]["enrichment"]  # type: ignore[index]
    assert conversion["data"]["enrichment"]["answers"]  # type: ignore[index]


def test_a_conversions_session_is_spliced_in_byte_for_byte() -> None:
    body = orjson.dumps(make_session("ses_exact"))[:-1] + b', "big": 12345678901234567890123}'
    raw, session = parse_session(body, "ses_exact")
    payload = build_conversion_payload(
        Conversion("purchase.completed", {"price": 999}, "ses_exact"),
        enriched(raw, enrich(session)),
        None,
        None,
        NOW,
    )
    assert b'"session":' + body + b',"enrichment":' in payload


@pytest.mark.parametrize(
    "reason",
    [
        "no_session_id",
        "invalid_session_id",
        "not_found",
        "rejected",
        "invalid_payload",
        "too_large",
    ],
)
def test_a_conversion_without_its_session_says_why(reason: str) -> None:
    payload = conversion_for("purchase.completed", None, {"price": 999}, reason)
    EVERY_TYPE.validate(payload)
    assert payload["data"] == {
        "session": None,
        "enrichment": None,
        "session_error": reason,
        "trigger": {**TRIGGER, "event_id": "evt_conv", "type": "purchase.completed"},
        "event": {"price": 999},
    }


def test_every_reason_funnelfox_refuses_a_session_for_is_a_session_error() -> None:
    # Pipeline._session_failed delivers a conversion with the reason of any Permanent error its
    # session's fetch or validation raises; only the sinks' own refusals never get there.
    sink_side = {errors.SinkGone, errors.SinkRejected}
    session_side = {c.reason for c in errors.Permanent.__subclasses__() if c not in sink_side}
    assert session_side <= set(get_args(SessionError))


@pytest.mark.parametrize("data", [None, [], "text", 3, {"deep": {"list": [1, None, True]}}])
def test_the_events_data_is_delivered_whatever_its_shape(data: object) -> None:
    payload = conversion_for("purchase.completed", "ses_any_data", data)
    EVERY_TYPE.validate(payload)
    assert payload["data"]["event"] == data  # type: ignore[index]


def test_the_schema_of_every_type_refuses_what_no_type_is() -> None:
    payload = conversion_for("subscription.active", "ses_conv", SUBSCRIPTION)
    for change in (
        {"type": "subscription.expired"},
        {"data": {**payload["data"], "session_error": "gone"}},  # type: ignore[dict-item]
        {"data": {**payload["data"], "extra": 1}},  # type: ignore[dict-item]
    ):
        with pytest.raises(jsonschema.ValidationError):
            EVERY_TYPE.validate({**payload, **change})
