"""The fleet's record of its destinations in Redis (``ffe:sinks``): name → queue.

Every worker registers its destinations when it starts, so the console (backfill, dlq replay)
and the metrics reader know them without a worker's settings.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from worker.keys import SINKS, delivery_queue


def register_sinks(client: redis.Redis, names: list[str]) -> None:
    """Record this worker's destinations for the console and the metrics reader."""
    if names:
        client.hset(SINKS, mapping={name: delivery_queue(name) for name in names})


def registered_sinks(client: redis.Redis) -> list[str]:
    """Every destination a worker of this fleet has delivered to (sorted)."""
    return sorted(_text(name) for name in client.hkeys(SINKS))


async def registered_sinks_async(client: aioredis.Redis) -> list[str]:
    """The same, from an asyncio client."""
    return sorted(_text(name) for name in await client.hkeys(SINKS))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
