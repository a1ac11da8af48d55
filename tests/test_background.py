"""A delivery the task stopped waiting for finishes in the background, over a real Redis.

A pool process waits a short hold for a destination's attempts; past it the task ends and the
attempts go on, and are recorded (ledger, delivery records) when they end. A destination with
batches already away is not waited for at all, and past its limit its deliveries wait in the
ledger without an attempt.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

import pytest
import redis
from pipelines import pipeline_on

from worker import errors
from worker.background import Background
from worker.keys import ledger_key
from worker.ledger import Ledger
from worker.pipeline import Pipeline
from worker.runtime import new_event_loop, result_of
from worker.sinks.base import Delivery, Outcome, Sink
from worker.work import Work

HOLD_S = 0.05
pytestmark = pytest.mark.timeout(60)


class HeldSink(Sink):
    """Answers every delivery once ``release`` is called: a destination that hangs till then."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[Delivery] = []
        self._released = asyncio.Event()
        self.answer: errors.StageError | None = None

    def release(self, answer: errors.StageError | None = None) -> None:
        self.answer = answer
        self._released.set()

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        self.received.extend(deliveries)
        await self._released.wait()
        return [Outcome(self.answer, 0.001) for _ in deliveries]


def pipeline_for(redis_url: str, sink: Sink) -> AbstractAsyncContextManager[Pipeline]:
    """A pipeline with a ledger, waiting ``HOLD_S`` for ``sink`` and then leaving it to run on."""
    return pipeline_on(
        redis_url,
        [sink],
        with_client=lambda client: {"ledger": Ledger(client, ttl_s=600)},
        background=Background(hold_s=HOLD_S, max_batches=2, retry_s=1.0),
    )


def test_a_hanging_destination_is_waited_for_once_then_not_at_all_then_held(
    redis_url: str, redis_client: redis.Redis
) -> None:
    sink = HeldSink("slow")
    ids = [f"ses_away{n}" for n in range(6)]

    async def main() -> None:
        async with pipeline_for(redis_url, sink) as pipeline:
            background = pipeline.background
            assert background is not None
            fetched = await pipeline.fetch([Work(sid) for sid in ids])
            works = fetched.deliveries["slow"]
            assert background.wait_s("slow") == HOLD_S
            first = await pipeline.deliver("slow", works[:2])
            # Held past the hold: the task ends with nothing decided for them.
            assert (first.done, first.retries, background.away()) == ([], [], 1)
            assert background.wait_s("slow") == 0.0  # slow right now: not waited for again
            second = await pipeline.deliver("slow", works[2:4])
            assert (second.done, background.away()) == ([], 2)
            assert len(sink.received) == 4
            # As many batches away as it may have: the next waits in the ledger, unattempted.
            third = await pipeline.deliver("slow", works[4:])
            assert len(sink.received) == 4
            assert [(w.session_id, w.attempts, d) for w, d in third.retries] == [
                (sid, 0, 1.0) for sid in ids[4:]
            ]
            assert {e.outcome for e in third.events} == {"in_flight"}
            sink.release()
            assert await background.drain(5) == 0
            assert background.away() == 0
            assert background.wait_s("slow") == HOLD_S
            pending = await pipeline.state.pending_sinks(ids, ["slow"])
        # Recorded once they ended: delivered, in the delivery records and the ledger.
        assert pending == [[], [], [], [], ["slow"], ["slow"]]

    asyncio.run(main())
    for sid in ids[:4]:
        assert redis_client.hget(ledger_key(sid), "d:slow") == b"d", sid
    for sid in ids[4:]:
        assert redis_client.hget(ledger_key(sid), "d:slow") == b"q", sid


def test_a_background_failure_is_retried_through_the_ledger(
    redis_url: str, redis_client: redis.Redis
) -> None:
    sink = HeldSink("slow")

    async def main() -> tuple[list[list[str]], int]:
        async with pipeline_for(redis_url, sink) as pipeline:
            assert pipeline.background is not None
            fetched = await pipeline.fetch([Work("ses_awayfail")])
            result = await pipeline.deliver("slow", fetched.deliveries["slow"])
            assert result.retries == []
            sink.release(errors.SinkUnavailable("webhook answered 503"))
            left = await pipeline.background.drain(5)
            return await pipeline.state.pending_sinks(["ses_awayfail"], ["slow"]), left

    pending, left = asyncio.run(main())
    assert (pending, left) == ([["slow"]], 0)
    # The attempt counted, and the retry waits in the ledger's due index.
    assert redis_client.hget(ledger_key("ses_awayfail"), "d:slow") == b"r"
    assert redis_client.zcard("ffe:due") == 1


def test_a_stage_that_raises_timeouterror_is_not_waited_on_forever() -> None:
    loop = new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def times_out() -> None:
        await asyncio.wait_for(asyncio.sleep(5), timeout=0.01)

    async def answers() -> int:
        await asyncio.sleep(0.25)  # past one signal check
        return 42

    raised: list[BaseException] = []

    def wait() -> None:
        try:
            result_of(asyncio.run_coroutine_threadsafe(times_out(), loop))
        except BaseException as exc:
            raised.append(exc)

    try:
        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(5)
        assert not waiter.is_alive(), "result_of kept waiting on a finished future"
        assert [type(e) for e in raised] == [TimeoutError]
        assert result_of(asyncio.run_coroutine_threadsafe(answers(), loop)) == 42
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.mark.parametrize("batches", [1, 3])
def test_background_counts_batches_per_destination(batches: int) -> None:
    async def main() -> None:
        background = Background(hold_s=1.0, max_batches=2)
        gate = asyncio.Event()

        async def finish() -> None:
            await gate.wait()

        for _ in range(batches):
            background.keep("a", finish())
        assert background.full("a") == (batches >= 2)
        assert not background.full("b")
        assert background.wait_s("b") == 1.0
        assert await background.drain(0.01) == batches  # still away when drain gave up
        gate.set()
        assert await background.drain(1) == 0
        assert not background.full("a")

    asyncio.run(main())
