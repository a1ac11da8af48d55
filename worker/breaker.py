"""A circuit breaker per destination, shared by the fleet, and the operator's pause.

A destination whose deliveries fail BREAKER_FAILURES times in a row because it cannot take
them (a timeout, a refused connection, 408, 429, 5xx) is **open**; its explicit answers (410
Gone dead-letters that delivery as before, other 4xx) do not count, and any success resets
the count. While open, its deliveries wait in the ledger instead of being attempted, without
using up their retries. One probe delivery every BREAKER_PROBE_S decides: a success closes
it, a failure keeps it open, and its delivery waits like the others, its retries untouched
(an explicit answer to a probe, a 410 or another 4xx, is decided as any attempt's).
An operator's pause (``python -m worker destinations pause NAME``) holds deliveries the same
way, with no probes, until ``resume``.

State in Redis (``worker.keys.breaker_key``): a hash with ``failures`` (in a row), ``open``
(since when) and ``paused``, and a short-lived probe token (``breaker_probe_key``).
"""

from __future__ import annotations

import logging
import secrets
from typing import Literal

import redis
import redis.asyncio as aioredis

from worker.keys import breaker_key, breaker_probe_key

log = logging.getLogger("worker.breaker")

Gate = Literal["closed", "probe", "open", "paused"]

# Add a batch's outcomes. ARGV: successes, failures, threshold, now.
# Returns 'opened', 'closed' (a transition), or '' (none).
_REPORT = """
local opened = redis.call('hget', KEYS[1], 'open')
if tonumber(ARGV[1]) > 0 then
    redis.call('hset', KEYS[1], 'failures', 0)
    if opened then
        redis.call('hdel', KEYS[1], 'open')
        return 'closed'
    end
    return ''
end
local failures = redis.call('hincrby', KEYS[1], 'failures', tonumber(ARGV[2]))
if not opened and failures >= tonumber(ARGV[3]) then
    redis.call('hset', KEYS[1], 'open', ARGV[4])
    return 'opened'
end
return ''
"""


class Breaker:
    """One destination's breaker, as a worker's pipeline sees it."""

    def __init__(self, client: aioredis.Redis, name: str, *, failures: int, probe_s: float) -> None:
        self._redis = client
        self.name = name
        self.failures = failures
        self.probe_s = probe_s
        self._key = breaker_key(name)
        self._probe = breaker_probe_key(name)
        self._report = client.register_script(_REPORT)
        self._token = secrets.token_hex(8)

    async def gate(self) -> Gate:
        """Whether deliveries may go now: closed, one probe, or not at all."""
        state = await self._redis.hmget(self._key, ["open", "paused"])
        opened, paused = state
        if paused:
            return "paused"
        if not opened:
            return "closed"
        probe_ms = max(1, int(self.probe_s * 1000))
        if await self._redis.set(self._probe, self._token, nx=True, px=probe_ms):
            return "probe"
        return "open"

    async def report(self, successes: int, failures: int, now: float) -> None:
        """Count a batch's outcomes; log when the breaker opens or closes."""
        if not successes and not failures:
            return
        change = await self._report([self._key], [successes, failures, self.failures, now])
        change = change.decode() if isinstance(change, bytes) else change
        if change == "opened":
            log.error(
                "destination %s paused: %d deliveries failed in a row; one probe every %g s",
                self.name,
                self.failures,
                self.probe_s,
                extra={"stage": f"deliver:{self.name}", "outcome": "breaker_open"},
            )
        elif change == "closed":
            log.warning(
                "destination %s resumed: a probe delivery succeeded",
                self.name,
                extra={"stage": f"deliver:{self.name}", "outcome": "breaker_closed"},
            )


def set_paused(client: redis.Redis, name: str, paused: bool) -> None:
    """An operator's pause or resume of one destination."""
    if paused:
        client.hset(breaker_key(name), "paused", "1")
    else:
        client.hdel(breaker_key(name), "paused")


def read_state(client: redis.Redis, name: str) -> dict[str, object]:
    """What the console and the metrics show of one destination's breaker."""
    opened, paused, failures = client.hmget(breaker_key(name), ["open", "paused", "failures"])
    return {
        "paused": bool(paused),
        "open": opened is not None,
        "failures_in_a_row": int(failures or 0),
    }
