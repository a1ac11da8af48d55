"""The pipeline's decisions over a real Redis: go on, retry after a delay, or dead-letter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from pydantic import SecretStr

from worker import errors
from worker.deadletters import DeadLetters
from worker.fetch import FunnelFoxClient
from worker.http import HttpSession
from worker.keys import claim_key, delivered_key
from worker.pipeline import Pipeline, StageResult
from worker.retry import RetryPolicy
from worker.sinks.base import Delivery, Outcome, Sink
from worker.state import DeliveryState
from worker.work import Work
from workshop.sessions import make_session

T = TypeVar("T")
POLICY = RetryPolicy(base_s=0.01, max_s=0.1, max_attempts=3)


class RecordingSink(Sink):
    """A sink that records what it got and answers from a script."""

    def __init__(self, name: str, answer: Callable[[str], errors.StageError | None]) -> None:
        self.name = name
        self.answer = answer
        self.received: list[Delivery] = []

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        self.received.extend(deliveries)
        return [Outcome(self.answer(d.session_id), 0.001) for d in deliveries]


def upstream(request: httpx.Request) -> httpx.Response:
    session_id = request.url.path.rsplit("/", 1)[-1]
    if "missing" in session_id:
        return httpx.Response(404, json={"message": "Not Found"})
    if "flaky" in session_id:
        return httpx.Response(503, headers={"Retry-After": "0"})
    if "broken" in session_id:
        return httpx.Response(200, content=b'{"id": "%s"}' % session_id.encode())
    if "locked" in session_id:
        return httpx.Response(401, json={"message": "Unauthorized"})
    return httpx.Response(200, content=orjson.dumps(make_session(session_id)))


def run(
    redis_url: str, use: Callable[[Pipeline], Coroutine[Any, Any, T]], sinks: Sequence[Sink]
) -> T:
    async def main() -> T:
        client = aioredis.Redis.from_url(redis_url)
        http = HttpSession(httpx.MockTransport(upstream), httpx.Timeout(1))
        pipeline = Pipeline(
            funnelfox=FunnelFoxClient(http, api_url="http://ff.test/v1", secret=SecretStr("s_1")),
            sinks={sink.name: sink for sink in sinks},
            state=DeliveryState(client, dedupe_ttl_s=60, claim_ttl_s=5),
            dead_letters=DeadLetters(client),
            policy=POLICY,
            claim_wait_s=0.2,
            now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        )
        try:
            return await use(pipeline)
        finally:
            await client.aclose()
            await http.aclose()

    return asyncio.run(main())


def ok(_: str) -> None:
    return None


def dead_letters(redis_url: str) -> dict[str, dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    records = {k.decode(): orjson.loads(v) for k, v in client.hgetall("ffe:dlq").items()}
    client.close()
    return records


def test_fetch_builds_one_payload_for_every_sink(redis_url: str) -> None:
    sinks = [RecordingSink("webhook", ok), RecordingSink("stream", ok)]
    trigger = {"event_id": "evt_1"}
    result = run(
        redis_url, lambda p: p.fetch([Work("ses_a", trigger=trigger), Work("ses_b")]), sinks
    )
    assert result.done == ["ses_a", "ses_b"]
    assert set(result.deliveries) == {"webhook", "stream"}
    first = result.deliveries["webhook"][0]
    assert first.session_id == "ses_a"
    assert first.attempts == 0
    assert first.payload is not None
    payload = orjson.loads(first.payload)
    assert payload["data"]["trigger"] == trigger
    assert payload["data"]["session"]["id"] == "ses_a"
    assert result.deliveries["stream"][0].payload == first.payload


def test_permanent_fetch_failures_are_dead_lettered_with_their_reason(redis_url: str) -> None:
    result = run(
        redis_url,
        lambda p: p.fetch([Work("ses_missing"), Work("ses_broken"), Work("bad/id")]),
        [RecordingSink("webhook", ok)],
    )
    assert result.deliveries == {}
    assert result.retries == []
    records = dead_letters(redis_url)
    assert records["fetch|ses_missing"]["reason"] == "not_found"
    assert records["validate|ses_broken"]["reason"] == "invalid_payload"
    assert records["fetch|bad/id"]["reason"] == "invalid_id"
    assert all(r["attempts"] == 1 for r in records.values())


def test_retryable_fetch_failure_is_scheduled_then_dead_lettered(redis_url: str) -> None:
    sinks = [RecordingSink("webhook", ok)]
    work = Work("ses_flaky")
    delays = []
    for expected_attempts in (1, 2):
        result = run(redis_url, lambda p, w=work: p.fetch([w]), sinks)  # type: ignore[misc]
        ((work, delay),) = result.retries
        assert work.attempts == expected_attempts
        assert 0 <= delay <= POLICY.max_s
        delays.append(delay)
    result = run(redis_url, lambda p: p.fetch([work]), sinks)
    assert result.retries == []
    record = dead_letters(redis_url)["fetch|ses_flaky"]
    assert (record["reason"], record["attempts"]) == ("retries_exhausted", 3)
    assert "503" in record["error"]


def test_auth_failure_is_logged_loudly_once(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    sinks = [RecordingSink("webhook", ok)]

    async def twice(p: Pipeline) -> None:
        await p.fetch([Work("ses_locked1"), Work("ses_locked2")])
        await p.fetch([Work("ses_locked3")])

    with caplog.at_level(logging.INFO):
        run(redis_url, twice, sinks)
    loud = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(loud) == 1
    assert "FUNNELFOX_SECRET" in loud[0].getMessage()
    assert "s_1" not in caplog.text


def test_delivered_session_is_not_fetched_or_delivered_again(redis_url: str) -> None:
    sink = RecordingSink("webhook", ok)
    first = run(redis_url, lambda p: p.fetch([Work("ses_once")]), [sink])
    run(redis_url, lambda p: p.deliver("webhook", first.deliveries["webhook"]), [sink])
    again = run(redis_url, lambda p: p.fetch([Work("ses_once")]), [sink])
    assert again.skipped == ["ses_once"]
    assert again.deliveries == {}
    redelivered = run(
        redis_url, lambda p: p.deliver("webhook", first.deliveries["webhook"]), [sink]
    )
    assert redelivered.skipped == ["ses_once"]
    assert [d.session_id for d in sink.received] == ["ses_once"]


def test_one_sink_failing_does_not_repeat_the_other(redis_url: str) -> None:
    good = RecordingSink("stream", ok)
    bad = RecordingSink("webhook", lambda _: errors.SinkUnavailable("503"))
    built = run(redis_url, lambda p: p.fetch([Work("ses_two")]), [good, bad])
    run(redis_url, lambda p: p.deliver("stream", built.deliveries["stream"]), [good, bad])
    failed = run(
        redis_url, lambda p: p.deliver("webhook", built.deliveries["webhook"]), [good, bad]
    )
    assert len(failed.retries) == 1
    # The retry of the webhook never reaches the stream again, nor refetches.
    again = run(redis_url, lambda p: p.fetch([Work("ses_two")]), [good, bad])
    assert list(again.deliveries) == ["webhook"]
    assert len(good.received) == 1


def test_gone_is_dead_lettered_at_once_with_its_payload(redis_url: str) -> None:
    sink = RecordingSink("webhook", lambda _: errors.SinkGone("webhook answered 410"))
    built = run(redis_url, lambda p: p.fetch([Work("ses_gone")]), [sink])
    result = run(redis_url, lambda p: p.deliver("webhook", built.deliveries["webhook"]), [sink])
    assert result.retries == []
    record = dead_letters(redis_url)["deliver:webhook|ses_gone"]
    assert (record["stage"], record["reason"], record["attempts"]) == ("deliver:webhook", "gone", 1)
    client = redis.Redis.from_url(redis_url)
    assert (
        client.hget("ffe:dlq:payload", "deliver:webhook|ses_gone")
        == built.deliveries["webhook"][0].payload
    )
    assert not client.exists(claim_key("webhook", "ses_gone"))
    assert not client.exists(delivered_key("webhook", "ses_gone"))
    client.close()


def test_a_claimed_session_waits_for_its_holder(redis_url: str) -> None:
    sink = RecordingSink("webhook", ok)
    built = run(redis_url, lambda p: p.fetch([Work("ses_busy")]), [sink])
    client = redis.Redis.from_url(redis_url)
    client.set(claim_key("webhook", "ses_busy"), "someone-else", px=5000)
    result: StageResult = run(
        redis_url, lambda p: p.deliver("webhook", built.deliveries["webhook"]), [sink]
    )
    assert sink.received == []
    ((work, delay),) = result.retries
    assert (work.session_id, work.attempts, delay) == ("ses_busy", 0, 0.2)
    assert client.get(claim_key("webhook", "ses_busy")) == b"someone-else"
    client.close()
