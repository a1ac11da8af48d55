"""The retry policy, declared once: exponential backoff with full jitter and a cap."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before attempt n+1, and when to stop."""

    base_s: float = 1.0
    max_s: float = 300.0
    max_attempts: int = 8

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
        ceiling = min(self.max_s, self.base_s * 2 ** max(0, attempts_made - 1))
        delay = (rng or random).uniform(0, ceiling)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return min(delay, self.max_s)
