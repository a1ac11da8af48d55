"""How long a pool process waits on one destination before it goes on to other work.

A prefork pool process runs one task at a time. A destination that hangs to its timeout, or
whose rate limit spaces its deliveries out, would hold the process for that long, and a few such
messages hold every process while the other destinations' queues wait. So a delivery waits at
most ``hold_s`` for its attempts; what is still under way then finishes here in the background,
on the process's event loop (which runs between tasks), and is recorded when it ends.

A destination already finishing a batch in the background is slow right now: its next batch is
not waited for at all, and once ``max_batches`` of its batches are away, further deliveries to
it wait in the ledger (no attempt, no retry used) for ``retry_s``. So a hanging destination costs
each process one ``hold_s``, then nothing until its attempts time out and its breaker opens.

Nothing is lost if the process dies meanwhile: the message was acknowledged, but the session's
ledger entry still shows the delivery queued, so the reconciler publishes it again, and the
delivery record's claim keeps a second attempt from starting while the first may still land.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("worker.background")

# A healthy webhook answers well inside this; a slower batch finishes in the background.
HOLD_S = 0.5
# Batches of one destination finishing in the background of one process, at most.
MAX_BATCHES = 4
# How long a delivery waits in the ledger when its destination has that many away.
RETRY_S = 1.0


@dataclass
class Background:
    """Per worker process: the deliveries finishing after their task has ended."""

    hold_s: float = HOLD_S
    max_batches: int = MAX_BATCHES
    retry_s: float = RETRY_S
    _away: dict[str, set[asyncio.Task[None]]] = field(default_factory=dict)

    def full(self, destination: str) -> bool:
        """Whether ``destination`` has as many batches away as it may."""
        return len(self._away.get(destination, ())) >= self.max_batches

    def wait_s(self, destination: str) -> float:
        """How long a delivery task waits for its attempts to ``destination``."""
        return 0.0 if self._away.get(destination) else self.hold_s

    def keep(self, destination: str, finish: Coroutine[Any, Any, None]) -> None:
        """Run ``finish`` to its end in the background, counted against ``destination``."""
        away = self._away.setdefault(destination, set())
        task = asyncio.ensure_future(finish)
        away.add(task)
        task.add_done_callback(lambda done: self._ended(destination, done))

    def away(self) -> int:
        """How many batches are finishing in the background, all destinations together."""
        return sum(len(tasks) for tasks in self._away.values())

    async def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every batch away; how many did not end in time."""
        tasks = [task for tasks in self._away.values() for task in tasks]
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return len(pending)

    def _ended(self, destination: str, task: asyncio.Task[None]) -> None:
        self._away.get(destination, set()).discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Recording failed (Redis away): the ledger still shows the deliveries queued, and
            # the reconciler publishes them again; their claims keep them from doubling.
            log.warning(
                "a delivery finishing in the background could not be recorded",
                exc_info=task.exception(),
                extra={"stage": f"deliver:{destination}"},
            )
