"""Fixtures: a real Redis (flushed per test), the FunnelFox simulator, a webhook receiver."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from processes import fleet_env

from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import DEMO_WEBHOOK_SECRET, WebhookReceiver
from workshop.redis_server import EmbeddedRedis, redis_reachable
from workshop.sentinel import SentinelCluster

FOX_SECRET = "secret_test_0123456789"
# A database of its own, never db 0 (a user's data), and likely not another test run's:
# queues are per database, so two runs sharing one would take each other's messages.
TEST_DB = int(os.environ.get("TEST_REDIS_DB") or 1 + os.getpid() % 15)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """REDIS_URL's server if it answers (in TEST_DB), else an embedded redis-server."""
    base = (
        os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379"
    )
    base = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    if redis_reachable(f"{base}/{TEST_DB}"):
        yield f"{base}/{TEST_DB}"
        return
    with EmbeddedRedis() as embedded:
        yield embedded.url.rsplit("/", 1)[0] + f"/{TEST_DB}"


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """A clean database for one test."""
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    yield redis_server_url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client on the test's database."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def aof_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of the test's own with AOF on (fsync always), to be killed and restarted."""
    with EmbeddedRedis(appendonly=True) as server:
        yield server


@pytest.fixture
def sentinel_cluster() -> Iterator[SentinelCluster]:
    """A primary, a replica and three Sentinels of the test's own (down after 1 s)."""
    with SentinelCluster() as cluster:
        yield cluster


@pytest.fixture
def simulator() -> Iterator[FunnelFoxSimulator]:
    """The FunnelFox simulator on a free port."""
    sim = FunnelFoxSimulator(secret=FOX_SECRET)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A Standard Webhooks receiver on a free port."""
    recv = WebhookReceiver(secret=DEMO_WEBHOOK_SECRET)
    recv.start()
    yield recv
    recv.stop()


@pytest.fixture
def worker_env(
    redis_url: str, simulator: FunnelFoxSimulator, receiver: WebhookReceiver
) -> dict[str, str]:
    """Environment for worker and CLI processes: both sinks on, tiny retry delays."""
    return fleet_env(redis_url, simulator.base_url, receiver.url, FOX_SECRET)
