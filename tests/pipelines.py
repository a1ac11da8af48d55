"""Pipelines over a real Redis for tests: FunnelFox behind ``httpx.MockTransport``, sinks that
record what they got, tiny retry delays."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import orjson
import redis
import redis.asyncio as aioredis
from pydantic import SecretStr

from worker import errors
from worker.deadletters import DeadLetters
from worker.fetch import FunnelFoxClient
from worker.http import HttpSession
from worker.pipeline import Pipeline
from worker.retry import RetryPolicy
from worker.sinks.base import Delivery, Outcome, Sink
from worker.state import DeliveryState
from workshop.sessions import make_session

T = TypeVar("T")
Handler = Callable[[httpx.Request], httpx.Response]
POLICY = RetryPolicy(base_s=0.01, max_s=0.1, max_attempts=3)


def fixed_clock() -> datetime:
    """Always 1 January 2026: a clock that keeps payloads the same whenever a test runs."""
    return datetime(2026, 1, 1, tzinfo=UTC)


def ok(_: str) -> None:
    """A sink's scripted answer: delivered."""
    return None


class RecordingSink(Sink):
    """A sink that records what it got and answers from a script."""

    def __init__(self, name: str, answer: Callable[[str], errors.StageError | None] = ok) -> None:
        self.name = name
        self.answer = answer
        self.received: list[Delivery] = []

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        self.received.extend(deliveries)
        return [Outcome(self.answer(d.session_id), 0.001) for d in deliveries]


def upstream(request: httpx.Request) -> httpx.Response:
    """FunnelFox's Get Session, answering by what the session id says it is."""
    session_id = request.url.path.rsplit("/", 1)[-1]
    if "missing" in session_id:
        return httpx.Response(404, json={"message": "Not Found"})
    if "flaky" in session_id:
        return httpx.Response(503, headers={"Retry-After": "0"})
    if "broken" in session_id:
        return httpx.Response(200, content=b'{"id": "%s"}' % session_id.encode())
    if "locked" in session_id:
        return httpx.Response(401, json={"message": "Unauthorized"})
    return httpx.Response(200, content=orjson.dumps(make_session(session_id)))


def dead_letters(redis_url: str) -> dict[str, dict[str, Any]]:
    """The dead letters' records, by their ``stage|session id`` key."""
    client = redis.Redis.from_url(redis_url)
    records = {k.decode(): orjson.loads(v) for k, v in client.hgetall("ffe:dlq").items()}
    client.close()
    return records


@contextlib.asynccontextmanager
async def pipeline_on(
    redis_url: str,
    sinks: Iterable[Sink],
    handler: Handler = upstream,
    *,
    max_body_bytes: int | None = None,
    with_client: Callable[[aioredis.Redis], Mapping[str, Any]] | None = None,
    **fields: Any,
) -> AsyncIterator[Pipeline]:
    """A pipeline on its own Redis client, FunnelFox answered by ``handler``; ``fields`` are
    the Pipeline's other fields, and ``with_client`` makes those that need the client."""
    client = aioredis.Redis.from_url(redis_url)
    http = HttpSession(httpx.MockTransport(handler), httpx.Timeout(1))
    try:
        yield Pipeline(
            funnelfox=FunnelFoxClient(
                http,
                api_url="http://ff.test/v1",
                secret=SecretStr("s_1"),
                max_body_bytes=max_body_bytes,
            ),
            sinks={sink.name: sink for sink in sinks},
            state=DeliveryState(client, dedupe_ttl_s=60, claim_ttl_s=5),
            dead_letters=DeadLetters(client),
            policy=POLICY,
            **(with_client(client) if with_client else {}),
            **fields,
        )
    finally:
        await client.aclose()
        await http.aclose()


def run_pipeline(
    redis_url: str,
    sinks: Iterable[Sink],
    use: Callable[[Pipeline], Coroutine[Any, Any, T]],
    handler: Handler = upstream,
    **options: Any,
) -> T:
    """What ``use`` returns from a pipeline built as ``pipeline_on`` builds it, in an event
    loop of its own."""

    async def main() -> T:
        async with pipeline_on(redis_url, sinks, handler, **options) as pipeline:
            return await use(pipeline)

    return asyncio.run(main())
