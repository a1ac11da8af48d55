"""Redis stream sink: XADD each payload to a stream, capped in length."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any, Self

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config.destinations import Destination, StreamDestination
from worker import errors
from worker.keys import delivered_key
from worker.sinks.base import Delivery, Outcome, Resources, Sink

# On the state Redis: the XADD and the delivery record in one atomic step, and no XADD when
# the record exists, so neither a crash between the two nor a client's own retry of the
# command (redis-py retries on a dropped connection) can append a session twice.
# KEYS: stream, delivered record. ARGV: maxlen, ttl, then the entry's fields and values.
_XADD_ONCE = """
if redis.call('exists', KEYS[2]) == 1 then return 0 end
redis.call('xadd', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
redis.call('set', KEYS[2], '1', 'EX', ARGV[2])
return 1
"""


def entry_id(name: str, session_id: str, event_id: str | None = None) -> str:
    """The ``webhook_id`` field of an entry: stable per destination and unit of work (a
    session, or a conversion's event)."""
    subject = session_id if event_id is None else f"event\n{event_id}"
    digest = hashlib.sha256(f"{name}\n{subject}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


class StreamSink(Sink):
    """Appends ``{session_id, webhook_id, payload}`` entries (a conversion's with its
    ``event_id`` first); one round trip per batch.

    With ``dedupe_ttl_s`` (the stream lives on the state Redis) each entry is appended once:
    exactly once. On another Redis it is at least once: a crash after the XADD and before the
    delivery record is written appends the session again on the retry.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream: str,
        maxlen: int,
        name: str = "stream",
        dedupe_ttl_s: int | None = None,
    ) -> None:
        self.name = name
        self._redis = redis
        self._stream = stream
        self._maxlen = maxlen
        self._dedupe_ttl_s = dedupe_ttl_s
        self._xadd_once = redis.register_script(_XADD_ONCE)

    @classmethod
    def from_destination(cls, destination: Destination, resources: Resources) -> Self:
        """A sink for a ``type = "redis_stream"`` destination."""
        assert isinstance(destination, StreamDestination)
        sink = cls(
            resources.redis_for(destination.redis_url),
            stream=destination.stream,
            maxlen=destination.maxlen,
            name=destination.name,
            dedupe_ttl_s=resources.dedupe_ttl_s if destination.redis_url is None else None,
        )
        sink.filters = destination.filters
        return sink

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Append every payload in one pipeline; a failed command fails only its item."""
        started = time.perf_counter()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for delivery in deliveries:
                    await self._append(pipe, delivery)
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

    async def _append(self, pipe: Any, delivery: Delivery) -> None:
        fields: dict[str, str | bytes] = {}
        if delivery.event_id is not None:
            fields["event_id"] = delivery.event_id
        fields["session_id"] = delivery.session_id
        fields["webhook_id"] = entry_id(self.name, delivery.session_id, delivery.event_id)
        fields["payload"] = delivery.payload
        if self._dedupe_ttl_s is not None:
            # Delivery records are keyed by the unit of work: a conversion's by its event id.
            unit = delivery.event_id if delivery.event_id is not None else delivery.session_id
            keys = [self._stream, delivered_key(self.name, unit)]
            args: list[str | int | bytes] = [self._maxlen, self._dedupe_ttl_s]
            for name, value in fields.items():
                args += [name, value]
            await self._xadd_once(keys, args, client=pipe)
            return
        # approximate=True lets Redis trim whole macro nodes: cheap, and still bounded.
        pipe.xadd(
            self._stream,
            dict(fields),
            maxlen=self._maxlen,
            approximate=True,
        )
