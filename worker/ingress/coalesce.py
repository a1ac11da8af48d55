"""Accepted events gathered for a moment and published together, as one broker message.

A worker pays a few ms for each message whatever it carries, so at hundreds of events a second
one message per event is most of what it does. Each ``submit`` joins the batch being gathered
and returns only once that batch is in the broker, or raises what publishing it raised: an
answer still means its own event is queued.

A batch is published when it holds ``max_batch`` items, or ``window_s`` after its first item
arrived, whichever comes first; with ``window_s`` 0 each item is published at once, alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class CoalescerClosed(RuntimeError):
    """An item submitted after shutdown began: nothing would publish it."""


class Coalescer(Generic[T]):
    """Gathers items on the event loop; each batch is published from a worker thread."""

    def __init__(
        self,
        publish: Callable[[list[T]], None],
        *,
        window_s: float,
        max_batch: int,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self._publish = publish
        self._window_s = window_s
        self._max_batch = max_batch
        self._limiter = limiter
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._closed = False

    async def submit(self, item: T) -> None:
        """Return once ``item``'s batch is in the broker; raise what publishing it raised."""
        if self._closed:
            raise CoalescerClosed("the ingress is shutting down")
        loop = asyncio.get_running_loop()
        published: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, published))
        if self._window_s <= 0 or len(self._pending) >= self._max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush)
        # Shielded: a caller that gives up leaves its item in the batch, as a publish already
        # under way in a thread cannot be taken back either.
        await asyncio.shield(published)

    async def aclose(self) -> None:
        """Publish what is gathered now (nothing is dropped) and wait for every batch."""
        self._closed = True
        self._flush()
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        task = asyncio.ensure_future(self._publish_batch(batch))
        # Batches publish side by side (the limiter bounds the threads); each is held here
        # until done, as the loop keeps only a weak reference to a task.
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _publish_batch(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        try:
            # Publishing blocks: a worker thread keeps the loop serving other requests.
            await anyio.to_thread.run_sync(
                self._publish, [item for item, _ in batch], limiter=self._limiter
            )
        except Exception as exc:
            for _, published in batch:
                if not published.done():
                    published.set_exception(exc)
        except BaseException:
            for _, published in batch:
                published.cancel()
            raise
        else:
            for _, published in batch:
                if not published.done():
                    published.set_result(None)
