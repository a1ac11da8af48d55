"""The proof: a completion and its session's conversions through the Procfile's web: and
worker: processes, the FunnelFox simulator and a Standard Webhooks receiver.

A completion, then ``subscription.active`` and ``purchase.completed`` for the same session,
arrive as three deliveries with distinct webhook-ids, the conversions carrying the session's
UTM and answers and the event's data, built from the enrichment the completion kept (one
FunnelFox request for the three); every event sent twice is delivered once; an event without
a session, and one whose session FunnelFox no longer has, are delivered with session null;
a completion whose session has an object-valued reply and no user_agent is delivered as sent,
not dead-lettered.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import redis
from conftest import FOX_SECRET
from processes import run_cli, start_worker, wait_until
from test_ingress_e2e import start_web

from worker.conversions import CONVERSION_TYPES
from worker.enrichments import decode
from worker.keys import enriched_key
from worker.schema import PUBLISHED_EVERY_TYPE
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import WebhookReceiver
from workshop.sessions import session_body

pytestmark = pytest.mark.integration

WEBHOOK = "/webhooks/funnelfox"
AUTH = {"Fox-Secret-Key": FOX_SECRET}
SESSION = "ses_01KPROOF0CONVERSION0000001"
GONE = "ses_01KPROOF0GONE-s404"
# The simulator's body tokens (workshop/faults.py): one reply's value is an object, and there
# is no user_agent field.
SHAPED = "ses_01KPROOF0SHAPED-objreply-nouseragent"
SUBSCRIPTION = {
    "entitlement": "premium",
    "expires_at": 1769904000,
    "session_id": SESSION,
    "starts_at": 1767225600,
    "vendor": "stripe",
    "vendor_product_id": "prod_monthly",
    "vendor_profile_id": "cus_1",
    "vendor_subscription_id": "sub_1",
    "vendor_transaction_id": "txn_1",
}
PURCHASE = {"price": 2999, "currency": "USD", "product_id": "prod_lifetime"}


def envelope(event_id: str, event_type: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": event_type,
        "created_at": 1767225600,
        "is_sandbox": False,
        "project_id": "01KPROOFPROJECT00000000000",
        "funnel_id": "01KPROOFFUNNEL000000000000",
        "profile_id": "pro_01KPROOFPROFILE00000000000",
        **fields,
    }


@pytest.fixture
def stack(worker_env: dict[str, str]) -> Iterator[tuple[dict[str, str], str]]:
    env = {
        **worker_env,
        "INGRESS_EVENT_TYPES": ",".join(["onboarding.completed", *sorted(CONVERSION_TYPES)]),
    }
    web, url = start_web(env)
    try:
        yield env, url
    finally:
        web.stop()


def webhook_id(url: str, subject: str) -> str:
    return "msg_" + hashlib.sha256(f"{url}\n{subject}".encode()).hexdigest()[:32]


def test_a_completion_and_its_conversions_are_distinct_deliveries(
    stack: tuple[dict[str, str], str],
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env, web = stack
    completion = envelope("evt_proof_done", "onboarding.completed", session_id=SESSION)
    active = envelope("evt_proof_active", "subscription.active", data=SUBSCRIPTION)
    purchase = envelope(
        "evt_proof_buy", "purchase.completed", data=PURCHASE, profile={"session_id": SESSION}
    )
    sessionless = envelope("evt_proof_alone", "purchase.completed", data=PURCHASE)
    gone = envelope("evt_proof_gone", "subscription.cancelled", session_id=GONE, data={})
    shaped = envelope("evt_proof_shaped", "onboarding.completed", session_id=SHAPED)

    worker = start_worker(env)
    answers: Counter[tuple[str, int]] = Counter()
    try:
        with httpx.Client(base_url=web, timeout=5) as client:

            def post(body: dict[str, Any]) -> None:
                response = client.post(WEBHOOK, json=body, headers=AUTH)
                answers[(body["id"], response.status_code)] += 1

            post(completion)
            post(completion)
            # The completion is delivered (its enrichment kept) before its conversions arrive.
            assert receiver.wait_for(1, timeout=30), worker.output
            for body in (active, purchase, sessionless, gone, shaped):
                post(body)
                post(body)
            assert receiver.wait_for(6, timeout=30), worker.output
            # A later event through the same path: once it is delivered, every duplicate
            # had its chance to be delivered too.
            post(envelope("evt_proof_last", "onboarding.completed", session_id="ses_LAST"))
            assert receiver.wait_for(7, timeout=30), worker.output
            assert wait_until(lambda: redis_client.xlen("test:enriched") == 7, 10)
    finally:
        worker.stop()

    events = ("evt_proof_done", "evt_proof_active", "evt_proof_buy", "evt_proof_alone")
    for event_id in (*events, "evt_proof_gone", "evt_proof_shaped"):  # sent twice: queued once
        assert answers[(event_id, 202)] == 1, answers
        assert answers[(event_id, 200)] == 1, answers

    delivered = {a.payload["data"]["trigger"]["event_id"]: a for a in receiver.deliveries()}
    assert len(receiver.deliveries()) == 7  # nothing delivered twice
    assert len({a.webhook_id for a in receiver.deliveries()}) == 7
    assert delivered["evt_proof_done"].webhook_id == webhook_id(receiver.url, SESSION)
    for event_id in (*events[1:], "evt_proof_gone"):
        assert delivered[event_id].webhook_id == webhook_id(receiver.url, f"event\n{event_id}")

    schema = jsonschema.Draft202012Validator(json.loads(PUBLISHED_EVERY_TYPE.read_text()))
    payloads = {event_id: attempt.payload for event_id, attempt in delivered.items()}
    for payload in payloads.values():
        schema.validate(payload)
    session = payloads["evt_proof_done"]
    assert session["type"] == "session.enriched"
    assert session["data"]["enrichment"]["utm"] is not None
    assert session["data"]["enrichment"]["answers"]
    for event_id, event_type, data in (
        ("evt_proof_active", "subscription.active", SUBSCRIPTION),
        ("evt_proof_buy", "purchase.completed", PURCHASE),
    ):
        conversion = payloads[event_id]
        assert conversion["type"] == event_type
        assert conversion["data"]["session"] == session["data"]["session"]
        assert conversion["data"]["enrichment"]["utm"] == session["data"]["enrichment"]["utm"]
        assert conversion["data"]["enrichment"] == session["data"]["enrichment"]
        assert conversion["data"]["event"] == data
        assert conversion["data"]["session_error"] is None
        assert conversion["data"]["trigger"]["event_id"] == event_id
    alone = payloads["evt_proof_alone"]["data"]
    assert (alone["session"], alone["enrichment"], alone["session_error"]) == (
        None,
        None,
        "no_session_id",
    )
    assert alone["event"] == PURCHASE
    assert payloads["evt_proof_gone"]["data"]["session_error"] == "not_found"
    # Through the real ingress, a session FunnelFox's spec would not allow is delivered as sent.
    assert delivered["evt_proof_shaped"].webhook_id == webhook_id(receiver.url, SHAPED)
    assert session_body(SHAPED) in delivered["evt_proof_shaped"].body
    shaped_data = payloads["evt_proof_shaped"]["data"]
    assert "user_agent" not in shaped_data["session"]
    height = shaped_data["enrichment"]["answers"]["height"]["height_picker"]
    assert height == {"value": 180, "unit": "cm"}  # the object, carried as sent
    assert shaped_data["enrichment"]["device"] is None

    # One FunnelFox request served the completion and both conversions.
    assert len(simulator.requests_for(SESSION)) == 1
    assert len(simulator.requests_for(GONE)) == 1
    kept_bytes = redis_client.memory_usage(enriched_key(SESSION))
    kept = decode(redis_client.get(enriched_key(SESSION)) or b"")
    assert kept is not None
    assert json.loads(kept.session) == session["data"]["session"]
    raw_bytes = len(kept.session) + len(kept.enrichment)
    assert kept_bytes is not None
    assert kept_bytes < raw_bytes  # compressed
    with capsys.disabled():
        print(
            f"\nconversions: 3 deliveries for {SESSION} from 1 FunnelFox request (2 saved); "
            f"kept enrichment {kept_bytes} B in Redis ({raw_bytes} B uncompressed)"
        )

    entries = [dict(redis_client.xrange("test:enriched")[n][1]) for n in range(7)]
    by_event = {e.get(b"event_id", b"").decode(): e for e in entries}
    assert by_event["evt_proof_active"][b"session_id"] == SESSION.encode()
    assert by_event["evt_proof_alone"][b"session_id"] == b""

    told = run_cli(["status", SESSION, "evt_proof_active", "evt_proof_alone"], env)
    assert told.returncode == 0, told.stderr
    story, active_story, alone_story = (json.loads(line) for line in told.stdout.splitlines())
    assert story["state"] == "delivered"
    assert [(c["event_id"], c["state"]) for c in story["conversions"]] == [
        ("evt_proof_active", "delivered"),
        ("evt_proof_buy", "delivered"),
    ]
    assert (active_story["type"], active_story["session_id"], active_story["state"]) == (
        "subscription.active",
        SESSION,
        "delivered",
    )
    assert active_story["destinations"] == {"stream": "delivered", "webhook": "delivered"}
    fetch = [a for a in active_story["attempts"] if a["stage"] == "fetch"]
    assert [(a["outcome"], a.get("detail")) for a in fetch] == [("ok", "reused")]
    assert (alone_story["session_id"], alone_story["state"]) == (None, "delivered")
    assert redis_client.hlen("ffe:dlq") == 0  # the shaped session included
