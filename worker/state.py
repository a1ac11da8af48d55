"""The worker's own state in Redis: delivery records (idempotency) and short delivery claims.

Keys: ``delivered_key`` and ``claim_key`` in ``worker.keys``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import redis.asyncio as aioredis

from worker.keys import claim_key, delivered_key

# Delete a claim only if it is still ours: after a lease ran out, another worker may hold it.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class DeliveryState:
    """Idempotency records shared by every worker on one Redis."""

    def __init__(self, redis: aioredis.Redis, *, dedupe_ttl_s: int, claim_ttl_s: float) -> None:
        self._redis = redis
        self._dedupe_ttl_s = dedupe_ttl_s
        self._claim_ttl_ms = int(claim_ttl_s * 1000)
        self._token = secrets.token_hex(8)

    async def pending_sinks(
        self, session_ids: Sequence[str], sinks: Sequence[str]
    ) -> list[list[str]]:
        """For each session, the sinks that have not taken it yet (one round trip)."""
        if not session_ids or not sinks:
            return [list(sinks) for _ in session_ids]
        keys = [delivered_key(sink, sid) for sid in session_ids for sink in sinks]
        found = await self._redis.mget(keys)
        width = len(sinks)
        return [
            [sink for j, sink in enumerate(sinks) if found[i * width + j] is None]
            for i in range(len(session_ids))
        ]

    async def claim(self, sink: str, session_ids: Sequence[str]) -> list[str]:
        """Claim each session for delivery: 'claimed', 'delivered' or 'busy' (one round trip)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.exists(delivered_key(sink, sid))
                pipe.set(claim_key(sink, sid), self._token, nx=True, px=self._claim_ttl_ms)
            results = await pipe.execute()
        states, needless = [], []
        for sid, delivered, claimed in zip(session_ids, results[::2], results[1::2], strict=True):
            if delivered:
                states.append("delivered")
                if claimed:
                    needless.append(sid)
            else:
                states.append("claimed" if claimed else "busy")
        if needless:  # rare: a repeat of a session already delivered
            await self.settle(sink, delivered=(), released=needless)
        return states

    async def settle(self, sink: str, delivered: Sequence[str], released: Sequence[str]) -> None:
        """Record deliveries and give back the claims of both lists (one round trip)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid in delivered:
                pipe.set(delivered_key(sink, sid), "1", ex=self._dedupe_ttl_s)
            for sid in (*delivered, *released):
                pipe.eval(_RELEASE, 1, claim_key(sink, sid), self._token)
            await pipe.execute()

    async def forget(self, sink: str, session_ids: Sequence[str]) -> None:
        """Drop delivery records, so an explicit replay delivers again."""
        if session_ids:
            await self._redis.delete(*(delivered_key(sink, sid) for sid in session_ids))
