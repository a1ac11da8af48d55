"""The fleet's record of its destinations in Redis (``ffe:sinks``): name → queue.

Every worker registers its destinations when it starts, so the console (backfill, dlq replay)
and the metrics reader know them without a worker's settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from config.destinations import Destination
from worker.keys import SINKS, delivery_queue
from worker.redis_clients import text


def register_destinations(client: redis.Redis, destinations: Sequence[Destination]) -> None:
    """Record this worker's destinations for the console and the metrics reader.

    What is recorded holds no secret: the kind, the target without credentials, the filters.
    """
    if destinations:
        client.hset(SINKS, mapping={d.name: describe(d) for d in destinations})


def describe(destination: Destination) -> bytes:
    """A destination as the console lists it."""
    return orjson.dumps(
        {
            "queue": delivery_queue(destination.name),
            "type": destination.type,
            "target": destination.target(),
            "filters": destination.filters.describe(),
            "rate_limit_per_s": destination.rate_limit_per_s,
        }
    )


def registered_destinations(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every destination a worker of this fleet registered, by name."""
    found = {}
    for name, raw in sorted(client.hgetall(SINKS).items()):
        try:
            found[text(name)] = orjson.loads(raw)
        except orjson.JSONDecodeError:  # an older worker recorded the queue name only
            found[text(name)] = {"queue": text(raw)}
    return found


def registered_sinks(client: redis.Redis) -> list[str]:
    """Every destination a worker of this fleet has delivered to (sorted)."""
    return sorted(text(name) for name in client.hkeys(SINKS))


async def registered_sinks_async(client: aioredis.Redis) -> list[str]:
    """The same, from an asyncio client."""
    return sorted(text(name) for name in await client.hkeys(SINKS))
