"""Which destinations a fetch task delivers to itself, on the first attempt.

Handing each enriched session to a ``deliver`` message costs Celery a message per session and
destination, the bulk of the live path's cost (one event, one session). A fetch therefore makes
the first attempt itself, in the same event loop, as soon as a wave of its sessions is recorded.
The queues stay for what should not hold a fetch: retries, a destination that paces its
deliveries (a rate limit), and one that was slow here lately, which goes back to its own queue
for a while so that it delays only its own deliveries, not the fetches of every session.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A destination whose deliveries of one wave took longer than this is slow ...
SLOW_S = 1.0
# ... and is handed to its queue for this long before the next inline try.
COOLDOWN_S = 30.0


@dataclass
class InlineGate:
    """Per worker process: whether a destination is delivered inline right now."""

    slow_s: float = SLOW_S
    cooldown_s: float = COOLDOWN_S
    clock: Callable[[], float] = time.monotonic
    _queued_until: dict[str, float] = field(default_factory=dict)

    def allows(self, sink: str) -> bool:
        """False while ``sink`` is cooling down after a slow inline delivery."""
        return self._queued_until.get(sink, 0.0) <= self.clock()

    def observe(self, sink: str, took_s: float) -> None:
        """Note how long one inline delivery to ``sink`` took."""
        if took_s > self.slow_s:
            self._queued_until[sink] = self.clock() + self.cooldown_s
