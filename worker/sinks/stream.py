"""Redis stream sink: XADD each payload to OUTPUT_STREAM, capped in length."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Self

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from config.destinations import Destination, StreamDestination
from worker import errors
from worker.sinks.base import Delivery, Outcome, Resources, Sink


class StreamSink(Sink):
    """Appends ``{session_id, payload}`` entries (a conversion's with its ``event_id`` first);
    one pipelined round trip per batch."""

    def __init__(
        self, redis: aioredis.Redis, *, stream: str, maxlen: int, name: str = "stream"
    ) -> None:
        self.name = name
        self._redis = redis
        self._stream = stream
        self._maxlen = maxlen

    @classmethod
    def from_destination(cls, destination: Destination, resources: Resources) -> Self:
        """A sink for a ``type = "redis_stream"`` destination."""
        assert isinstance(destination, StreamDestination)
        return cls(
            resources.redis_for(destination.redis_url),
            stream=destination.stream,
            maxlen=destination.maxlen,
            name=destination.name,
        )

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """XADD every payload in one pipeline; a failed command fails only its item."""
        started = time.perf_counter()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for delivery in deliveries:
                    fields: dict[FieldT, EncodableT] = {
                        "session_id": delivery.session_id,
                        "payload": delivery.payload,
                    }
                    if delivery.event_id is not None:
                        fields = {"event_id": delivery.event_id, **fields}
                    # approximate=True lets Redis trim whole macro nodes: cheap, and still bounded.
                    pipe.xadd(
                        self._stream,
                        fields,
                        maxlen=self._maxlen,
                        approximate=True,
                    )
                results = await pipe.execute(raise_on_error=False)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            failure = errors.SinkUnavailable(f"redis stream unavailable: {type(exc).__name__}")
            return [Outcome(failure, time.perf_counter() - started)] * len(deliveries)
        # One round trip carried them all: each took the pipeline's time.
        elapsed = time.perf_counter() - started
        return [
            Outcome(
                errors.SinkUnavailable(f"XADD failed: {result}")
                if isinstance(result, RedisError)
                else None,
                elapsed,
            )
            for result in results
        ]
