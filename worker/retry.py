"""The retry policy, declared once: a schedule of delays, or exponential backoff with a cap.

Either way a server's Retry-After is a floor for the next delay and the cap bounds both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_JITTER = random.Random()


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before attempt n+1, and when to stop."""

    base_s: float = 1.0
    max_s: float = 300.0
    max_attempts: int = 8
    # When set: the delay before each retry, in order (RETRY_SCHEDULE_S), jittered by ±10 %.
    schedule: tuple[float, ...] = ()

    @classmethod
    def from_schedule(cls, delays: tuple[float, ...]) -> RetryPolicy:
        """A policy that waits ``delays[i]`` before retry i+1: len(delays) + 1 attempts."""
        # The cap leaves room for the longest delay's jitter; it bounds a Retry-After too.
        return cls(
            base_s=delays[0], max_s=max(delays) * 1.1, max_attempts=len(delays) + 1, schedule=delays
        )

    def can_retry(self, attempts_made: int) -> bool:
        """Whether another attempt is allowed after ``attempts_made`` attempts."""
        return attempts_made < self.max_attempts

    def delay_s(
        self,
        attempts_made: int,
        retry_after_s: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait after ``attempts_made`` attempts (1 = after the first one failed).

        Full jitter (AWS architecture blog, "Exponential Backoff and Jitter") spreads a burst of
        failures out instead of retrying them in lockstep. A server's Retry-After is a floor,
        and the cap bounds both.
        """
        rng = rng or _JITTER
        if self.schedule:
            planned = self.schedule[min(max(attempts_made, 1), len(self.schedule)) - 1]
            # ±10 %: spreads a burst of failures out without changing the schedule's shape.
            delay = planned * rng.uniform(0.9, 1.1)
        else:
            ceiling = min(self.max_s, self.base_s * 2 ** max(0, attempts_made - 1))
            delay = rng.uniform(0, ceiling)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return min(delay, self.max_s)
