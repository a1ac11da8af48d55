"""What one worker process builds once and keeps: an event loop, pooled clients, the pipeline.

Built lazily in the process that runs tasks (after the prefork pool forks), never at import:
sockets and event loops do not survive a fork.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis

from config import Settings
from worker.deadletters import DeadLetters
from worker.fetch import FunnelFoxClient
from worker.http import HttpSession, make_session
from worker.pipeline import Pipeline
from worker.ratelimit import FleetRateLimit
from worker.redact import make_scrubber, url_secrets
from worker.retry import RetryPolicy
from worker.sinks import Sink, StreamSink, WebhookSink
from worker.state import DeliveryState

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (less CPU per request), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def redis_client(url: str, *, max_connections: int = 50) -> aioredis.Redis:
    """An asyncio Redis client with timeouts, so a half-open connection never hangs a task."""
    return aioredis.Redis.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        socket_keepalive=True,
    )


class Runtime:
    """One per worker process: owns the loop and every client the pipeline uses."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = new_event_loop()
        self._clients: list[HttpSession] = []
        self.redis = redis_client(settings.redis_url)
        self.pipeline = self._build_pipeline()

    def _build_pipeline(self) -> Pipeline:
        settings = self.settings
        assert settings.funnelfox.secret is not None, "checked when the worker started"
        upstream = self._client(settings.funnelfox.timeout_s, settings.funnelfox.max_connections)
        sinks: dict[str, Sink] = {}
        for name in settings.enabled_sinks:
            sinks[name] = self._sink(name)
        return Pipeline(
            funnelfox=FunnelFoxClient(
                upstream, api_url=settings.funnelfox.api_url, secret=settings.funnelfox.secret
            ),
            sinks=sinks,
            state=DeliveryState(
                self.redis,
                dedupe_ttl_s=settings.dedupe_ttl_s,
                claim_ttl_s=claim_ttl_s(settings),
            ),
            dead_letters=DeadLetters(self.redis),
            policy=RetryPolicy(
                base_s=settings.retry.backoff_base_s,
                max_s=settings.retry.backoff_max_s,
                max_attempts=settings.retry.max_attempts,
            ),
            metrics_redis=self.redis,
            rate_limit=(
                FleetRateLimit(self.redis, rate_per_s=settings.funnelfox.rate_limit_per_s)
                if settings.funnelfox.rate_limit_per_s
                else None
            ),
            claim_wait_s=min(claim_ttl_s(settings), settings.retry.backoff_max_s),
            scrub=scrubber(settings),
        )

    def _sink(self, name: str) -> Sink:
        settings = self.settings
        if name == "webhook":
            assert settings.webhook.url is not None
            assert settings.webhook.secret is not None
            http = self._client(settings.webhook.timeout_s, settings.webhook.max_connections)
            return WebhookSink(http, url=settings.webhook.url, secret=settings.webhook.secret)
        assert name == "stream"
        assert settings.output_stream is not None
        return StreamSink(
            self.redis, stream=settings.output_stream, maxlen=settings.output_stream_maxlen
        )

    def _client(self, timeout_s: float, max_connections: int) -> HttpSession:
        client = make_session(timeout_s=timeout_s, max_connections=max_connections)
        self._clients.append(client)
        return client

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run one stage to completion on this process's loop."""
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        """Close every client, then the loop."""

        async def _close() -> None:
            for client in self._clients:
                await client.aclose()
            await self.redis.aclose()

        self.loop.run_until_complete(_close())
        self.loop.close()


def claim_ttl_s(settings: Settings) -> float:
    """How long a delivery claim lives: past the longest a delivery can take, with margin."""
    return 2 * settings.webhook.timeout_s + 5


def scrubber(settings: Settings) -> Callable[[str], str]:
    """The scrubber for every secret this configuration holds."""
    return make_scrubber(
        [
            settings.funnelfox.secret,
            settings.webhook.secret,
            *url_secrets(settings.webhook.url),
            *url_secrets(settings.redis_url),
        ]
    )


_runtime: Runtime | None = None
_runtime_pid: int | None = None


def get_runtime(settings: Settings) -> Runtime:
    """This process's runtime, built on first use (and again in a forked child)."""
    global _runtime, _runtime_pid
    if _runtime is None or _runtime_pid != os.getpid():
        _runtime = Runtime(settings)
        _runtime_pid = os.getpid()
    return _runtime


def close_runtime() -> None:
    """Close this process's runtime if it has one."""
    global _runtime
    if _runtime is not None and _runtime_pid == os.getpid():
        _runtime.close()
    _runtime = None
