"""The circuit breaker as the pipeline applies it, over a real Redis.

While a destination is paused by its breaker, its deliveries wait without using up their
retries: the ones held back, and the one let through as the probe when the destination is
still down. An explicit answer (410 Gone) to a probe dead-letters it as before.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import pytest
import redis
from pipelines import POLICY, RecordingSink, dead_letters, fixed_clock, run_pipeline

from worker import errors
from worker.breaker import Breaker
from worker.keys import breaker_key, breaker_probe_key
from worker.pipeline import Pipeline, StageResult
from worker.sinks.base import Sink
from worker.work import Work

T = TypeVar("T")
PROBE_S = 30.0  # long: a test lets the next probe through by removing its token


def run(redis_url: str, use: Callable[[Pipeline], Coroutine[Any, Any, T]], sink: Sink) -> T:
    """What ``use`` returns from a pipeline whose breaker opens at the sink's first failure."""
    return run_pipeline(
        redis_url,
        [sink],
        use,
        with_client=lambda client: {
            "breakers": {sink.name: Breaker(client, sink.name, failures=1, probe_s=PROBE_S)}
        },
        now=fixed_clock,
    )


def unavailable(_: str) -> errors.StageError:
    return errors.SinkUnavailable("webhook answered 503")


def built(redis_url: str, sink: Sink, ids: Sequence[str]) -> list[Work]:
    result = run(redis_url, lambda p: p.fetch([Work(sid) for sid in ids]), sink)
    return result.deliveries[sink.name]


def deliver(redis_url: str, sink: Sink, works: list[Work]) -> StageResult:
    return run(redis_url, lambda p: p.deliver(sink.name, works), sink)


def test_a_failed_probe_waits_without_using_up_its_retries(
    redis_url: str, redis_client: redis.Redis
) -> None:
    sink = RecordingSink("webhook", unavailable)
    works = built(redis_url, sink, ["ses_probe"])
    first = deliver(redis_url, sink, works)  # closed: an attempt, and the breaker opens
    ((work, _),) = first.retries
    assert work.attempts == 1
    assert redis_client.hget(breaker_key("webhook"), "open") is not None
    # Many more probes than the retry policy allows attempts, all of them failed.
    for probe in range(POLICY.max_attempts + 2):
        redis_client.delete(breaker_probe_key("webhook"))  # the next probe is due
        result = deliver(redis_url, sink, [work])
        assert len(sink.received) == 2 + probe  # it was attempted, as the probe
        ((work, delay),) = result.retries
        assert (work.attempts, delay) == (1, PROBE_S)
        (event,) = result.events
        assert (event.outcome, event.value, event.detail) == ("breaker_open", "q", "503")
    assert dead_letters(redis_url) == {}


def test_deliveries_held_while_open_or_paused_are_not_attempts(
    redis_url: str, redis_client: redis.Redis
) -> None:
    sink = RecordingSink("webhook", unavailable)
    works = built(redis_url, sink, ["ses_h1", "ses_h2"])
    redis_client.hset(breaker_key("webhook"), "open", "1")
    redis_client.set(breaker_probe_key("webhook"), "another-worker")  # its probe is under way
    held = deliver(redis_url, sink, works)
    redis_client.hset(breaker_key("webhook"), "paused", "1")
    redis_client.delete(breaker_probe_key("webhook"))  # paused: no probe even when due
    paused = deliver(redis_url, sink, works)
    assert sink.received == []
    for result, why in ((held, "breaker_open"), (paused, "paused")):
        assert [(w.session_id, w.attempts) for w, _ in result.retries] == [
            ("ses_h1", 0),
            ("ses_h2", 0),
        ]
        assert {e.outcome for e in result.events} == {why}


@pytest.mark.parametrize("answer", ["gone", "rejected"])
def test_a_probe_answered_for_good_is_not_held(redis_url: str, answer: str) -> None:
    failures: dict[str, errors.StageError] = {
        "gone": errors.SinkGone("webhook answered 410"),
        "rejected": errors.SinkRejected("webhook answered 400"),
    }
    sink = RecordingSink("webhook", lambda _: failures[answer])
    works = built(redis_url, sink, ["ses_410"])
    client = redis.Redis.from_url(redis_url)
    client.hset(breaker_key("webhook"), "open", "1")
    client.close()
    result = deliver(redis_url, sink, works)
    assert len(sink.received) == 1
    assert result.retries == []
    assert [e.outcome for e in result.events] == [f"dead:{answer}"]
    assert list(dead_letters(redis_url)) == ["deliver:webhook|ses_410"]
