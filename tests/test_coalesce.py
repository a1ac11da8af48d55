"""The ingress's coalescer with a fake publish: which items go out together, and who hears of
a failure."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import anyio
import pytest

from worker.ingress.coalesce import Coalescer, CoalescerClosed

DEADLINE_S = 10


class FakePublish:
    """Records each batch it is called with (from the coalescer's worker threads)."""

    def __init__(self, fail_if: Callable[[list[int]], bool] = lambda batch: False) -> None:
        self.calls: list[list[int]] = []
        self.fail_if = fail_if

    def __call__(self, batch: list[int]) -> None:
        self.calls.append(batch)
        if self.fail_if(batch):
            raise ConnectionError("broker refused the connection")


async def called(publish: FakePublish, times: int) -> None:
    """Wait until ``publish`` has been called ``times`` times."""
    deadline = time.monotonic() + DEADLINE_S
    while len(publish.calls) < times:
        assert time.monotonic() < deadline, publish.calls
        await asyncio.sleep(0.005)


def test_submits_within_the_window_are_one_publish() -> None:
    publish = FakePublish()

    async def main() -> float:
        coalescer = Coalescer(publish, window_s=0.2, max_batch=100)
        started = time.monotonic()
        await asyncio.gather(*(coalescer.submit(n) for n in range(20)))
        return time.monotonic() - started

    waited = asyncio.run(main())

    assert publish.calls == [list(range(20))]
    assert waited >= 0.19  # the window starts with the first item and is waited out in full


def test_a_full_batch_goes_at_once_and_shutdown_sends_the_rest() -> None:
    publish = FakePublish()

    async def main() -> None:
        coalescer = Coalescer(publish, window_s=60, max_batch=4)
        waiting = [asyncio.ensure_future(coalescer.submit(n)) for n in range(10)]
        await called(publish, 2)  # two full batches, long before the window ends
        assert [w.done() for w in waiting[8:]] == [False, False]
        await coalescer.aclose()  # the last two are published, not dropped
        await asyncio.gather(*waiting)
        with pytest.raises(CoalescerClosed):
            await coalescer.submit(10)

    asyncio.run(main())

    assert publish.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_failed_publish_fails_its_own_batch_only() -> None:
    publish = FakePublish(fail_if=lambda batch: 4 in batch)

    async def main() -> list[BaseException | None]:
        coalescer = Coalescer(publish, window_s=60, max_batch=3)
        return await asyncio.gather(
            *(coalescer.submit(n) for n in range(6)), return_exceptions=True
        )

    outcomes = asyncio.run(main())

    assert publish.calls == [[0, 1, 2], [3, 4, 5]]
    assert outcomes[:3] == [None, None, None]
    assert all(isinstance(o, ConnectionError) for o in outcomes[3:]), outcomes


def test_window_zero_publishes_each_item_alone_at_once() -> None:
    publish = FakePublish()

    async def main() -> None:
        coalescer = Coalescer(publish, window_s=0, max_batch=100)
        await asyncio.gather(*(coalescer.submit(n) for n in range(5)))

    asyncio.run(main())

    assert sorted(publish.calls) == [[0], [1], [2], [3], [4]]


def test_batches_publish_side_by_side() -> None:
    """A batch whose publish hangs holds up its own items only."""
    release = threading.Event()
    calls: list[list[int]] = []

    def publish(batch: list[int]) -> None:
        calls.append(batch)
        if 0 in batch:
            assert release.wait(DEADLINE_S)

    async def main() -> None:
        coalescer = Coalescer(publish, window_s=60, max_batch=2, limiter=anyio.CapacityLimiter(4))
        first = asyncio.gather(coalescer.submit(0), coalescer.submit(1))
        await asyncio.wait_for(asyncio.gather(coalescer.submit(2), coalescer.submit(3)), DEADLINE_S)
        assert not first.done()
        release.set()
        await first

    asyncio.run(main())

    assert sorted(calls) == [[0, 1], [2, 3]]
