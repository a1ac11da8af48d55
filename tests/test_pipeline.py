"""The pipeline's decisions over a real Redis: go on, retry after a delay, or dead-letter."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import orjson
import pytest
import redis
from pipelines import (
    POLICY,
    Handler,
    RecordingSink,
    dead_letters,
    fixed_clock,
    ok,
    run_pipeline,
    upstream,
)

from worker import errors
from worker.keys import claim_key, delivered_key
from worker.pipeline import Pipeline, StageResult
from worker.sinks.base import Sink
from worker.work import Work

T = TypeVar("T")


def run(
    redis_url: str,
    use: Callable[[Pipeline], Coroutine[Any, Any, T]],
    sinks: Sequence[Sink],
    *,
    handler: Handler = upstream,
) -> T:
    """What ``use`` returns from a pipeline on a fixed clock that waits 0.2 s for a claim."""
    return run_pipeline(redis_url, sinks, use, handler, claim_wait_s=0.2, now=fixed_clock)


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
