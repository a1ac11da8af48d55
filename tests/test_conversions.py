"""Conversion events: their session found in the envelope, and their unit in a task item, a
retry, the ledger's context and a dead letter."""

from __future__ import annotations

from typing import Any

import pytest

from worker.conversions import (
    CONVERSION_TYPES,
    Conversion,
    InvalidConversion,
    conversion_of,
    is_conversion,
)
from worker.messages import read_batch_call
from worker.trigger import Trigger
from worker.work import Work

SUBSCRIPTION_DATA = {
    "entitlement": "premium",
    "expires_at": 1767225600,
    "session_id": "ses_DATA",
    "starts_at": 1764633600,
    "vendor": "stripe",
    "vendor_product_id": "prod_1",
    "vendor_profile_id": "cus_1",
    "vendor_subscription_id": "sub_1",
    "vendor_transaction_id": "txn_1",
}


def test_the_nine_purchase_and_subscription_types_are_conversions() -> None:
    subscription = ("created", "trialing", "active", "cycle", "paused", "resumed")
    expected = {"purchase.completed", *(f"subscription.{s}" for s in subscription)}
    expected |= {"subscription.cancelled", "subscription.unpaid"}
    assert expected == CONVERSION_TYPES
    assert not is_conversion("onboarding.completed")
    assert not is_conversion("profile.updated")


@pytest.mark.parametrize(
    ("envelope_id", "extra", "session_id", "error"),
    [
        (
            "ses_ENV",
            {"data": SUBSCRIPTION_DATA, "profile": {"session_id": "ses_PRO"}},
            "ses_ENV",
            None,
        ),
        (None, {"data": SUBSCRIPTION_DATA, "profile": {"session_id": "ses_PRO"}}, "ses_DATA", None),
        (None, {"data": {"amount": 999}, "profile": {"session_id": "ses_PRO"}}, "ses_PRO", None),
        (None, {"data": {"session_id": ""}, "profile": {"session_id": "ses_PRO"}}, "ses_PRO", None),
        (
            None,
            {"data": {"session_id": None}, "profile": {"session_id": "ses_PRO"}},
            "ses_PRO",
            None,
        ),
        (None, {"data": {"amount": 999}}, None, "no_session_id"),
        (None, {}, None, "no_session_id"),
        (None, {"data": [1, 2], "profile": "pro_1"}, None, "no_session_id"),
        (None, {"data": {"session_id": "../etc"}}, None, "invalid_session_id"),
        (
            None,
            {"data": {"session_id": 12}, "profile": {"session_id": "ses_PRO"}},
            None,
            "invalid_session_id",
        ),
    ],
)
def test_the_session_is_the_envelopes_else_datas_else_profiles(
    envelope_id: str | None, extra: dict[str, Any], session_id: str | None, error: str | None
) -> None:
    conversion = conversion_of("subscription.active", envelope_id, extra)
    assert (conversion.session_id, conversion.session_error) == (session_id, error)
    assert conversion.type == "subscription.active"
    assert conversion.data == extra.get("data")  # the event's data, whole


@pytest.mark.parametrize(
    "conversion",
    [
        Conversion("subscription.active", SUBSCRIPTION_DATA, "ses_DATA"),
        Conversion("purchase.completed", {"price": 999, "nested": {"a": [1, None]}}, "ses_X"),
        Conversion("purchase.completed", None, None, "no_session_id"),
        Conversion("subscription.unpaid", "odd", None, "invalid_session_id"),
    ],
)
def test_a_conversion_travels_whole_in_a_task_item_a_retry_and_the_ledger(
    conversion: Conversion,
) -> None:
    trigger = Trigger(event_id="evt_1", type=conversion.type).model_dump()
    work = Work("evt_1", attempts=2, first_seen_at=5.0, trigger=trigger, event=conversion)

    assert Work.from_message(work.to_message()) == work
    [parsed] = read_batch_call(([work.to_message()],), {}).works
    assert parsed == work
    rebuilt = Work.from_context("evt_1", 5.0, work.context())
    assert rebuilt == Work("evt_1", first_seen_at=5.0, trigger=trigger, event=conversion)
    assert rebuilt.payload_type == conversion.type
    assert rebuilt.fetch_id == conversion.session_id


def test_a_session_is_what_it_was() -> None:
    trigger = {"event_id": "evt_2", "type": "onboarding.completed"}
    work = Work("ses_A", trigger=trigger)
    assert work.to_message() == {
        "id": "ses_A",
        "first_seen_at": work.first_seen_at,
        "trigger": trigger,
    }
    assert work.context() == trigger  # what the ledger kept before conversions existed
    assert Work.from_context("ses_A", 1.0, trigger) == Work(
        "ses_A", first_seen_at=1.0, trigger=trigger
    )
    assert Work.from_context("ses_A", 1.0, None).trigger is None
    assert (work.payload_type, work.fetch_id) == ("session.enriched", "ses_A")


@pytest.mark.parametrize(
    "event",
    [[], "subscription.active", {"data": {}}, {"type": ""}, {"type": 3}],
)
def test_an_item_whose_event_is_not_a_conversion_is_refused(event: object) -> None:
    parsed = read_batch_call(([{"id": "evt_bad", "event": event}],), {})
    assert parsed.works == []
    [refusal] = parsed.refused
    assert (refusal.session_id, refusal.reason) == ("evt_bad", "invalid_message")


def test_a_stored_session_id_that_breaks_the_rules_is_not_fetched() -> None:
    conversion = Conversion.from_message({"type": "purchase.completed", "session_id": "a/b"})
    assert (conversion.session_id, conversion.session_error) == (None, "invalid_session_id")
    with pytest.raises(InvalidConversion):
        Conversion.from_message(None)
