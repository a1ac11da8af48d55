"""Sinks: the webhook's Standard Webhooks signature and answers; the stream's bounded XADD."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from worker import errors
from worker.http import HttpSession
from worker.sinks import Delivery, StreamSink, WebhookSink
from worker.sinks.stream import entry_id

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
URL = "https://hooks.example.test/in?token=abc"
TIMEOUT = httpx.Timeout(1)
PAYLOAD = orjson.dumps({"type": "session.enriched", "data": {"note": "Zürich 🙂"}})


def webhook_sink(handler: httpx.MockTransport) -> WebhookSink:
    return WebhookSink(HttpSession(handler, TIMEOUT), url=URL, secret=SecretStr(SECRET))


def post(
    status: int, headers: dict[str, str] | None = None
) -> tuple[list[httpx.Request], errors.StageError | None]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, headers=headers)

    sink = webhook_sink(httpx.MockTransport(handler))
    (outcome,) = asyncio.run(sink.deliver([Delivery("ses_1", PAYLOAD)]))
    assert outcome.duration_s >= 0
    return seen, outcome.error


def test_a_standardwebhooks_receiver_verifies_the_signature() -> None:
    seen, outcome = post(204)
    assert outcome is None
    (request,) = seen
    assert request.content == PAYLOAD
    verified = Webhook(SECRET).verify(request.content, dict(request.headers))
    assert verified["data"]["note"] == "Zürich 🙂"
    assert request.headers["webhook-id"].startswith("msg_")
    assert request.headers["webhook-signature"].startswith("v1,")


def test_a_tampered_body_fails_verification() -> None:
    seen, _ = post(204)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(PAYLOAD + b" ", dict(seen[0].headers))


def test_webhook_id_is_stable_per_session_and_destination() -> None:
    sink = webhook_sink(httpx.MockTransport(lambda r: httpx.Response(204)))
    other = WebhookSink(
        HttpSession(httpx.AsyncHTTPTransport(), TIMEOUT), url=URL + "x", secret=SecretStr(SECRET)
    )
    assert sink.message_id("ses_1") == sink.message_id("ses_1")
    assert sink.message_id("ses_1") != sink.message_id("ses_2")
    assert sink.message_id("ses_1") != other.message_id("ses_1")
    first = sink.headers("ses_1", PAYLOAD, datetime(2026, 1, 1, tzinfo=UTC))
    later = sink.headers("ses_1", PAYLOAD, datetime(2026, 1, 2, tzinfo=UTC))
    assert first["webhook-id"] == later["webhook-id"]
    assert first["webhook-timestamp"] != later["webhook-timestamp"]


@pytest.mark.parametrize(
    ("status", "expected", "reason"),
    [
        (200, None, None),
        (202, None, None),
        (410, errors.SinkGone, "gone"),
        (400, errors.SinkRejected, "rejected"),
        (404, errors.SinkRejected, "rejected"),
        (301, errors.SinkRejected, "rejected"),
        (302, errors.SinkRejected, "rejected"),
        (408, errors.SinkUnavailable, "sink_unavailable"),
        (429, errors.SinkUnavailable, "sink_unavailable"),
        (500, errors.SinkUnavailable, "sink_unavailable"),
        (503, errors.SinkUnavailable, "sink_unavailable"),
    ],
)
def test_answers_are_classified(
    status: int, expected: type[errors.StageError] | None, reason: str | None
) -> None:
    _, outcome = post(status, {"Location": "https://elsewhere.example/"})
    if expected is None:
        assert outcome is None
    else:
        assert isinstance(outcome, expected)
        assert outcome.reason == reason


def test_redirect_is_not_followed() -> None:
    seen, outcome = post(307, {"Location": "https://elsewhere.example/"})
    assert len(seen) == 1
    assert isinstance(outcome, errors.SinkRejected)
    assert "redirect not followed" in str(outcome)


def test_retry_after_on_429() -> None:
    _, outcome = post(429, {"Retry-After": "3"})
    assert isinstance(outcome, errors.SinkUnavailable)
    assert outcome.retry_after_s == 3


def test_connection_fault_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    sink = webhook_sink(httpx.MockTransport(handler))
    (outcome,) = asyncio.run(sink.deliver([Delivery("ses_1", PAYLOAD)]))
    assert isinstance(outcome.error, errors.SinkUnavailable)


def test_stream_sink_appends_and_stays_bounded(redis_url: str, redis_client: redis.Redis) -> None:
    async def deliver_all() -> list[errors.StageError | None]:
        client = aioredis.Redis.from_url(redis_url)
        sink = StreamSink(client, stream="out", maxlen=10)
        outcomes: list[errors.StageError | None] = []
        for start in range(0, 500, 50):
            outcomes += [
                o.error
                for o in await sink.deliver(
                    [Delivery(f"ses_{i}", PAYLOAD) for i in range(start, start + 50)]
                )
            ]
        await client.aclose()
        return outcomes

    assert asyncio.run(deliver_all()) == [None] * 500
    length = redis_client.xlen("out")
    assert 10 <= length < 500  # approximate trimming: bounded, never below the cap
    ((_, fields),) = redis_client.xrevrange("out", count=1)
    assert fields == {
        b"session_id": b"ses_499",
        b"webhook_id": entry_id("stream", "ses_499").encode(),
        b"payload": PAYLOAD,
    }


def test_stream_sink_reports_redis_down() -> None:
    async def deliver() -> list[errors.StageError | None]:
        client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        sink = StreamSink(client, stream="out", maxlen=10)
        try:
            outcomes = await sink.deliver([Delivery("ses_1", PAYLOAD), Delivery("ses_2", PAYLOAD)])
            return [o.error for o in outcomes]
        finally:
            await client.aclose()

    outcomes = asyncio.run(deliver())
    assert all(isinstance(o, errors.SinkUnavailable) for o in outcomes)
    assert len(outcomes) == 2


def test_a_stream_on_the_state_redis_takes_each_session_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The XADD and the delivery record are one step: a repeat (a retry after a cut, a
    redelivered message, redis-py re-sending the command) appends nothing."""

    async def deliver(ids: list[str]) -> list[errors.StageError | None]:
        client = aioredis.Redis.from_url(redis_url)
        sink = StreamSink(client, stream="once", maxlen=1000, name="warehouse", dedupe_ttl_s=60)
        outcomes = await sink.deliver([Delivery(sid, PAYLOAD) for sid in ids])
        await client.aclose()
        return [o.error for o in outcomes]

    assert asyncio.run(deliver(["ses_1", "ses_2"])) == [None, None]
    assert asyncio.run(deliver(["ses_1", "ses_2", "ses_3", "ses_3"])) == [None] * 4
    entries = redis_client.xrange("once")
    assert [fields[b"session_id"] for _, fields in entries] == [b"ses_1", b"ses_2", b"ses_3"]
    assert 0 < redis_client.ttl("ffe:delivered:warehouse:ses_1") <= 60
    ids = {fields[b"webhook_id"] for _, fields in entries}
    assert len(ids) == 3  # distinct per session; and per destination:
    assert entry_id("warehouse", "ses_1") != entry_id("stream", "ses_1")


def test_webhook_ids_are_distinct_per_destination_and_the_shorthand_keeps_its_own() -> None:
    http = HttpSession(httpx.MockTransport(lambda r: httpx.Response(204)), TIMEOUT)
    shorthand = WebhookSink(http, url=URL, secret=SecretStr(SECRET))
    named = WebhookSink(http, url=URL, secret=SecretStr(SECRET), name="crm")
    legacy = "msg_" + hashlib.sha256(f"{URL}\nses_1".encode()).hexdigest()[:32]
    assert shorthand.message_id("ses_1") == legacy  # what receivers saw before destinations
    assert named.message_id("ses_1") != legacy


def test_a_conversions_webhook_id_is_stable_per_event_and_destination() -> None:
    """Its session's completion and each of its conversions are distinct deliveries."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    sink = webhook_sink(httpx.MockTransport(handler))
    other = WebhookSink(
        HttpSession(httpx.AsyncHTTPTransport(), TIMEOUT), url=URL + "x", secret=SecretStr(SECRET)
    )
    deliveries = [
        Delivery("ses_1", PAYLOAD),
        Delivery("ses_1", PAYLOAD, event_id="evt_sub"),
        Delivery("ses_1", PAYLOAD, event_id="evt_buy"),
        Delivery("", PAYLOAD, event_id="evt_alone"),
    ]
    asyncio.run(sink.deliver(deliveries))
    ids = [request.headers["webhook-id"] for request in seen]
    assert ids[0] == sink.message_id("ses_1")  # session.enriched's, as before
    assert len(set(ids)) == 4
    assert ids[1] == sink.message_id("another session", event_id="evt_sub")  # the event's alone
    assert sink.message_id("", "evt_sub") != other.message_id("", "evt_sub")
    assert sink.message_id("evt_sub") != sink.message_id("", "evt_sub")  # never a session's
    for request in seen:
        Webhook(SECRET).verify(request.content, dict(request.headers))


def test_stream_entries_of_conversions_carry_their_event_id(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def deliver() -> None:
        client = aioredis.Redis.from_url(redis_url)
        sink = StreamSink(client, stream="out", maxlen=10)
        await sink.deliver([Delivery("ses_1", PAYLOAD, "evt_sub"), Delivery("", PAYLOAD, "evt_x")])
        await client.aclose()

    asyncio.run(deliver())
    assert [fields for _, fields in redis_client.xrange("out")] == [
        {
            b"event_id": b"evt_sub",
            b"session_id": b"ses_1",
            b"webhook_id": entry_id("stream", "ses_1", "evt_sub").encode(),
            b"payload": PAYLOAD,
        },
        {
            b"event_id": b"evt_x",
            b"session_id": b"",
            b"webhook_id": entry_id("stream", "", "evt_x").encode(),
            b"payload": PAYLOAD,
        },
    ]
