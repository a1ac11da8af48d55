"""The session model and the validate stage: lenient where FunnelFox is, strict where it matters."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from worker.errors import InvalidPayload
from worker.validate import parse_session


def session(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "ses_1",
        "funnel_id": "01HZY3V8Q4KXN2T5R7W9A1B3C4",
        "profile_id": "pro_01HZY3V8Q4KXN2T5R7W9A1B3C4",
        "created_at": 1716672462,
        "origin": "https://quiz.example/start",
        "user_agent": "Mozilla/5.0",
        "attributes": {"country": "GB", "city": "Birmingham"},
        "query_params": {"utm_source": "meta"},
        "replies": [{"screen_id": "goal", "element_id": "goal_opts", "value": "sleep"}],
    }
    base.update(changes)
    return base


def parse(document: dict[str, Any], session_id: str = "ses_1") -> tuple[dict[str, Any], Any]:
    """The parsed document and the model of ``document`` sent as JSON."""
    body = orjson.dumps(document)
    received, model = parse_session(body, session_id)
    assert received.raw == body
    return received.document, model


@pytest.mark.parametrize(
    "value",
    ["text", 42, 3.5, ["a", "b"], [], "2024-05-25", "Ça va 🙂", None],
    ids=["text", "int", "float", "multi", "empty-multi", "date", "unicode", "null"],
)
def test_reply_values(value: object) -> None:
    _, model = parse(session(replies=[{"screen_id": "s", "element_id": "e", "value": value}]))
    assert model.replies[0].value == value


def test_anonymized_session_with_empty_fields_is_valid() -> None:
    anonymized = session(
        user_agent="", replies=[], attributes={"ip": "", "postal_code": "", "country": "DE"}
    )
    raw, model = parse(anonymized)
    assert model.user_agent == ""
    assert model.replies == []
    assert raw == anonymized


def test_unknown_fields_are_kept_in_the_model_and_the_raw_body() -> None:
    document = session(brand_new={"x": 1}, attributes={"country": "GB", "asn": 64500})
    raw, model = parse(document)
    assert model.model_extra == {"brand_new": {"x": 1}}
    assert model.attributes.model_extra == {"asn": 64500}
    assert raw["brand_new"] == {"x": 1}


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (session(created_at="yesterday"), "created_at"),
        (session(created_at=True), "created_at"),
        ({k: v for k, v in session().items() if k != "replies"}, "replies: Field required"),
        (session(replies=[{"screen_id": "s", "value": 1}]), "replies.0.element_id"),
        (session(replies=[{"screen_id": "s", "element_id": "e", "value": {"a": 1}}]), "value"),
    ],
)
def test_invalid_sessions_name_the_field(document: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidPayload, match=fragment):
        parse(document)


def test_validation_message_does_not_echo_values() -> None:
    with pytest.raises(InvalidPayload) as caught:
        parse(session(created_at="203.0.113.7-private"))
    assert "203.0.113.7" not in str(caught.value)


@pytest.mark.parametrize(("body", "fragment"), [(b"<html>", "not JSON"), (b"[1]", "JSON list")])
def test_non_objects_are_invalid(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidPayload, match=fragment):
        parse_session(body, "ses_1")


def test_a_different_session_id_is_invalid() -> None:
    with pytest.raises(InvalidPayload, match="answered with id"):
        parse(session(id="ses_other"))
