"""The one registry of sink kinds, and the fleet's record of its destinations in Redis.

A new kind of destination is a Sink subclass with ``from_destination``, its settings model in
``config.destinations``, and one line in ``SINK_KINDS``; nothing else names kinds.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from config.destinations import Destination
from worker.keys import SINKS, delivery_queue
from worker.sinks.base import Resources, Sink
from worker.sinks.stream import StreamSink
from worker.sinks.webhook import WebhookSink

SINK_KINDS: dict[str, type[Sink]] = {
    "webhook": WebhookSink,
    "redis_stream": StreamSink,
}


def build_sink(destination: Destination, resources: Resources) -> Sink:
    """The sink that delivers to ``destination``."""
    return SINK_KINDS[destination.type].from_destination(destination, resources)


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
