"""A bug is never a permanent dead letter: any exception no boundary maps is internal_error.

It is logged at ERROR with its traceback, retried like a transient fault, and dead-lettered
as ``internal_error`` only when its retries run out; the rest of its batch goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx
import orjson
import pytest
import redis
from pipelines import POLICY, dead_letters, ok, upstream
from pydantic import SecretStr
from test_pipeline import run

from worker import errors
from worker.http import HttpSession
from worker.pipeline import StageResult
from worker.sinks.base import Delivery, Outcome, Sink
from worker.sinks.webhook import WebhookSink
from worker.work import Work

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def buggy_upstream(request: httpx.Request) -> httpx.Response:
    if "bug" in request.url.path:
        raise TypeError("an injected bug: unsupported operand")
    return upstream(request)


def test_a_bug_in_the_fetch_path_is_retried_logged_at_error_then_internal_error(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sinks = [RecordingSinkAll("webhook")]

    def fetch(works: list[Work]) -> StageResult:
        return run(redis_url, lambda p: p.fetch(works), sinks, handler=buggy_upstream)

    first = fetch([Work("ses_bug1"), Work("ses_fine")])

    assert first.done == ["ses_fine"]  # its batch-mate goes on
    [(retry, _delay)] = first.retries
    assert retry.session_id == "ses_bug1"
    assert retry.attempts == 1
    assert first.dead == []
    bug_logs = [r for r in caplog.records if r.getMessage() == "internal error"]
    assert [r.levelno for r in bug_logs] == [logging.ERROR]
    assert bug_logs[0].exc_info is not None
    assert bug_logs[0].exc_info[0] is TypeError

    # Every retry fails the same way: dead-lettered as internal_error, not rejected.
    result = first
    while not result.dead:
        [(work, _delay)] = result.retries
        result = fetch([work])
    [letter] = result.dead
    assert letter.reason == "internal_error"
    assert letter.attempts == POLICY.max_attempts
    assert dead_letters(redis_url)["fetch|ses_bug1"]["reason"] == "internal_error"


class RecordingSinkAll(Sink):
    def __init__(self, name: str) -> None:
        self.name = name

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return [Outcome(ok(d.session_id), 0.001) for d in deliveries]


def test_a_bug_in_the_delivery_path_is_internal_error_not_rejected(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    def receiver(request: httpx.Request) -> httpx.Response:
        if b"ses_bug2" in request.content:
            raise KeyError("an injected bug in our own code")
        return httpx.Response(204)

    http = HttpSession(httpx.MockTransport(receiver), httpx.Timeout(1))
    sink = WebhookSink(http, url="http://hooks.test/in", secret=SecretStr(SECRET))
    payload = orjson.dumps({"session": "ses_bug2"})
    batch = [Work("ses_bug2", payload=payload), Work("ses_ok2", payload=b'{"ok": 1}')]
    caplog.set_level(logging.INFO)

    result = run(redis_url, lambda p: p.deliver("webhook", batch), [sink])

    assert result.done == ["ses_ok2"]
    [(retry, _delay)] = result.retries
    assert retry.session_id == "ses_bug2"
    assert result.dead == []
    [record] = [r for r in caplog.records if r.getMessage() == "internal error"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[0] is KeyError


def test_internal_error_is_retryable_with_its_own_reason() -> None:
    error = errors.InternalError("x")
    assert isinstance(error, errors.Retryable)
    assert error.reason == error.exhausted_reason == "internal_error"


def test_known_transport_errors_are_still_translated(redis_url: str) -> None:
    """The boundary keeps mapping what it knows: a refused connection is sink_unavailable."""

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    http = HttpSession(httpx.MockTransport(refused), httpx.Timeout(1))
    sink = WebhookSink(http, url="http://hooks.test/in", secret=SecretStr(SECRET))
    result = run(redis_url, lambda p: p.deliver("webhook", [Work("ses_c", payload=b"{}")]), [sink])
    [(retry, _)] = result.retries
    assert retry.session_id == "ses_c"
    client = redis.Redis.from_url(redis_url)
    assert client.hlen("ffe:dlq") == 0
    client.close()


def test_one_session_whose_enrichment_raises_fails_alone_in_a_batch_of_100(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import worker.pipeline

    real_enrich = worker.pipeline.enrich

    def enrich(session):  # type: ignore[no-untyped-def]
        if session.id == "ses_b050":
            raise ZeroDivisionError("an injected bug in the enrichment")
        return real_enrich(session)

    monkeypatch.setattr(worker.pipeline, "enrich", enrich)
    batch = [Work(f"ses_b{n:03d}") for n in range(100)]
    sinks = [RecordingSinkAll("webhook")]

    result = run(redis_url, lambda p: p.fetch(batch), sinks)

    assert len(result.done) == 99
    assert "ses_b050" not in result.done
    assert sorted(w.session_id for w in result.deliveries["webhook"]) == sorted(result.done)
    while not result.dead:
        [(work, _delay)] = result.retries
        assert work.session_id == "ses_b050"
        result = run(redis_url, lambda p: p.fetch([work]), sinks)  # noqa: B023 - run at once
    [letter] = result.dead
    assert (letter.session_id, letter.stage, letter.reason) == (
        "ses_b050",
        "enrich",
        "internal_error",
    )
    assert any(
        r.levelno == logging.ERROR and r.getMessage() == "internal error" for r in caplog.records
    )
