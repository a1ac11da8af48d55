"""Per-event markers in Redis, so an event FunnelFox delivers twice is enqueued once.

    ffe:event:<event id>    "pending" while its task is being published (PENDING_TTL_S),
                            then "enqueued" for DEDUPE_TTL_S

A marker is taken *before* publishing and given back if publishing fails, so a failed attempt
never hides the event from FunnelFox's next try, and a crash between the two only holds it
for PENDING_TTL_S.
"""

from __future__ import annotations

import enum

import redis.asyncio as aioredis

from worker.keys import event_key

PENDING_TTL_S = 30
_PENDING = b"pending"
_ENQUEUED = b"enqueued"


class Claim(enum.Enum):
    """What taking an event's marker found."""

    NEW = "new"  # ours: publish it
    DUPLICATE = "duplicate"  # already in the broker
    IN_PROGRESS = "in_progress"  # another request is publishing it right now


class EventMarkers:
    """Take, confirm and give back event markers."""

    def __init__(self, redis: aioredis.Redis, *, dedupe_ttl_s: int) -> None:
        self._redis = redis
        self._dedupe_ttl_s = dedupe_ttl_s

    async def claim(self, event_id: str) -> Claim:
        """Take the marker if nobody holds it; else say who does."""
        key = event_key(event_id)
        if await self._redis.set(key, _PENDING, nx=True, ex=PENDING_TTL_S):
            return Claim.NEW
        state = await self._redis.get(key)
        if state is None:  # it expired in between: try once more
            if await self._redis.set(key, _PENDING, nx=True, ex=PENDING_TTL_S):
                return Claim.NEW
            state = await self._redis.get(key)
        return Claim.DUPLICATE if state == _ENQUEUED else Claim.IN_PROGRESS

    async def confirm(self, event_id: str) -> None:
        """The task is in the broker: remember the event for DEDUPE_TTL_S."""
        await self._redis.set(event_key(event_id), _ENQUEUED, ex=self._dedupe_ttl_s)

    async def release(self, event_id: str) -> None:
        """Publishing failed: let FunnelFox's next delivery of the event through."""
        await self._redis.delete(event_key(event_id))
