"""What one worker process builds once and keeps: an event loop, pooled clients, the pipeline.

Built lazily in the process that runs tasks (after the prefork pool forks), never at import:
sockets and event loops do not survive a fork.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis

from config import Settings
from worker.background import Background
from worker.breaker import Breaker
from worker.deadletters import DeadLetters
from worker.enrich_device import warm_up
from worker.enrichments import EnrichmentCache
from worker.fetch import FunnelFoxClient
from worker.http import HttpSession, make_session
from worker.inline import InlineGate
from worker.keys import destination_rate_limit_key
from worker.ledger import Ledger
from worker.pipeline import Pipeline
from worker.ratelimit import FleetRateLimit
from worker.redact import make_scrubber
from worker.redis_clients import async_client
from worker.retry import RetryPolicy
from worker.sinks.registry import build_sink
from worker.state import DeliveryState

T = TypeVar("T")
SIGNAL_CHECK_S = 0.1
log = logging.getLogger("worker.runtime")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (less CPU per request), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Runtime:
    """One per worker process: owns the loop and every client the pipeline uses.

    The loop runs in a thread of its own, between tasks too: a delivery a task stopped waiting
    for (worker.background) goes on and is recorded while the process runs other tasks.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = new_event_loop()
        self._loop_thread = threading.Thread(
            target=self.loop.run_forever, name="runtime-loop", daemon=True
        )
        self._loop_thread.start()
        self.background = Background()
        self._clients: list[HttpSession] = []
        self._other_redis: dict[str, aioredis.Redis] = {}
        self.redis = async_client(settings.redis_url)
        self.pipeline = self._build_pipeline()
        warm_up()  # before any batch: see worker.enrich_device.warm_up

    def _build_pipeline(self) -> Pipeline:
        settings = self.settings
        assert settings.funnelfox.secret is not None, "checked when the worker started"
        upstream = self.http_session(
            timeout_s=settings.funnelfox.timeout_s,
            max_connections=settings.funnelfox.max_connections,
        )
        sinks = {d.name: build_sink(d, self) for d in settings.destinations}
        breakers = {
            name: Breaker(
                self.redis,
                name,
                failures=settings.breaker_failures,
                probe_s=settings.breaker_probe_s,
            )
            for name in sinks
        }
        sink_limits = {
            d.name: FleetRateLimit(
                self.redis, rate_per_s=d.rate_limit_per_s, key=destination_rate_limit_key(d.name)
            )
            for d in settings.destinations
            if d.rate_limit_per_s
        }
        return Pipeline(
            funnelfox=FunnelFoxClient(
                upstream,
                api_url=settings.funnelfox.api_url,
                secret=settings.funnelfox.secret,
                max_body_bytes=settings.funnelfox.max_body_bytes,
            ),
            sinks=sinks,
            state=DeliveryState(
                self.redis,
                dedupe_ttl_s=settings.dedupe_ttl_s,
                claim_ttl_s=claim_ttl_s(settings),
            ),
            dead_letters=DeadLetters(self.redis),
            policy=retry_policy(settings),
            metrics_redis=self.redis,
            ledger=Ledger(self.redis, ttl_s=settings.ledger_ttl)
            if settings.ledger_enabled
            else None,
            rate_limit=(
                FleetRateLimit(self.redis, rate_per_s=settings.funnelfox.rate_limit_per_s)
                if settings.funnelfox.rate_limit_per_s
                else None
            ),
            enrichments=(
                EnrichmentCache(self.redis, ttl_s=settings.enrichment_cache_ttl_s)
                if settings.enrichment_cache_ttl_s
                else None
            ),
            claim_wait_s=claim_ttl_s(settings),
            breakers=breakers,
            sink_limits=sink_limits,
            inline=InlineGate() if settings.inline_delivery else None,
            background=self.background,
            scrub=scrubber(settings),
        )

    def http_session(self, *, timeout_s: float, max_connections: int) -> HttpSession:
        """A pooled HTTP client, closed with this runtime."""
        client = make_session(timeout_s=timeout_s, max_connections=max_connections)
        self._clients.append(client)
        return client

    @property
    def dedupe_ttl_s(self) -> int:
        """DEDUPE_TTL_S, for sinks that write their own delivery records."""
        return self.settings.dedupe_ttl_s

    def redis_for(self, url: str | None) -> aioredis.Redis:
        """The state Redis (None), or a client of its own for another Redis."""
        if url is None or url == self.settings.redis_url:
            return self.redis
        if url not in self._other_redis:
            self._other_redis[url] = async_client(url)
        return self._other_redis[url]

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run one stage to completion on this process's loop."""
        return result_of(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def close(self) -> None:
        """Let deliveries finishing in the background end, close every client, then the loop."""

        async def _close() -> None:
            # Past this, a delivery still away is the reconciler's (see worker.background).
            left = await self.background.drain(self.settings.slowest_delivery_s + 1)
            if left:
                log.warning("closing with delivery batches still away", extra={"count": left})
            for client in self._clients:
                await client.aclose()
            for redis in (self.redis, *self._other_redis.values()):
                await redis.aclose()

        self.run(_close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(5)
        self.loop.close()


def result_of(future: concurrent.futures.Future[T]) -> T:
    """``future``'s result, waking now and then meanwhile: Python runs signal handlers (the
    pool's SIGTERM handler, which ends a cancelled task's process) only in the main thread,
    between bytecodes, never while it sleeps in a lock another thread is to release."""
    while True:
        try:
            return future.result(timeout=SIGNAL_CHECK_S)
        except TimeoutError:
            if future.done():  # the stage's own TimeoutError
                raise


def claim_ttl_s(settings: Settings) -> float:
    """How long a delivery claim lives: past the longest a delivery can take, with margin."""
    return 2 * settings.slowest_delivery_s + 5


def retry_policy(settings: Settings) -> RetryPolicy:
    """RETRY_SCHEDULE_S, unless a RETRY_BACKOFF_* or RETRY_MAX_ATTEMPTS variable is set."""
    retry = settings.retry
    if retry.exponential:
        return RetryPolicy(
            base_s=retry.backoff_base_s, max_s=retry.backoff_max_s, max_attempts=retry.max_attempts
        )
    return RetryPolicy.from_schedule(retry.schedule)


def scrubber(settings: Settings) -> Callable[[str], str]:
    """The scrubber for every secret this configuration holds, every destination's included."""
    return make_scrubber(settings.sensitive_values())


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
