"""One request rate for the whole fleet, kept in Redis: GCRA with reservations.

Every worker on every host asks the same key for slots. A call reserves up to ``n`` slots
spaced ``1/rate`` apart, but only those that start within ``max_wait_s``: the caller sleeps
exactly until each slot (no polling) and hands the rest back to the queue, so waiting for the
limit never holds a worker slot longer than ``max_wait_s``. Redis's own clock is the clock,
so hosts with skewed clocks still agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from worker.keys import FUNNELFOX_RATE_LIMIT

# KEYS[1] = the theoretical arrival time (TAT, microseconds); ARGV = n, interval_us,
# burst_us, max_wait_us. Returns {granted, first_start_delay_us, interval_us}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
-- slot i starts at tat + i*interval - burst; grant those starting by now + max_wait
local room = now + max_wait + burst - tat
local granted = 0
if room >= 0 then granted = math.min(n, math.floor(room / interval) + 1) end
if granted > 0 then
  redis.call('SET', KEYS[1], tat + granted * interval, 'PX',
             math.ceil((tat + granted * interval - now) / 1000) + 1000)
end
local first = tat - burst - now
if first < 0 then first = 0 end
return {granted, first, interval}
"""


@dataclass(frozen=True)
class Reservation:
    """Slots granted: slot ``i`` may start ``delay_s(i)`` seconds from now."""

    granted: int
    first_delay_s: float
    interval_s: float

    def delay_s(self, index: int) -> float:
        """When slot ``index`` (0-based) may start, in seconds from the reservation."""
        return self.first_delay_s + index * self.interval_s


class FleetRateLimit:
    """FUNNELFOX_RATE_LIMIT_PER_S for every worker sharing one Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        rate_per_s: float,
        max_wait_s: float = 5.0,
        key: str = FUNNELFOX_RATE_LIMIT,
    ) -> None:
        self._redis = redis
        self._key = key
        self._interval_us = max(1, round(1_000_000 / rate_per_s))
        # A burst of a tenth of a second's worth: enough to absorb scheduling jitter, small
        # enough that no one-second window sees much more than the rate.
        self._burst_us = int(self._interval_us * max(0.0, rate_per_s / 10 - 1))
        self._max_wait_us = int(max_wait_s * 1_000_000)
        self._script = redis.register_script(_RESERVE)

    @property
    def rate_per_s(self) -> float:
        """The configured rate."""
        return 1_000_000 / self._interval_us

    async def reserve(self, wanted: int) -> Reservation:
        """Reserve up to ``wanted`` slots that start within the maximum wait."""
        if wanted <= 0:
            return Reservation(0, 0.0, self._interval_us / 1e6)
        granted, first_us, interval_us = await self._script(
            keys=[self._key],
            args=[wanted, self._interval_us, self._burst_us, self._max_wait_us],
        )
        return Reservation(int(granted), int(first_us) / 1e6, int(interval_us) / 1e6)
