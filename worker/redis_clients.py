"""Every Redis client this product opens: one place for timeouts, keepalive and the URL.

The worker's state, the ingress, the console and the metrics reader all connect here, so what
a connection to Redis is (bounded waits, health checks) is decided once.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from config import ConfigError
from worker.redact import make_scrubber, url_secrets


def async_client(
    url: str, *, timeout_s: float = 10, connect_timeout_s: float = 5, max_connections: int = 50
) -> aioredis.Redis:
    """An asyncio client with timeouts, so a half-open connection never hangs a caller."""
    return aioredis.Redis.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        health_check_interval=30,
        socket_keepalive=True,
    )


def async_fail_fast_client(url: str, timeout_s: float) -> aioredis.Redis:
    """An asyncio client whose every call gives up within about ``timeout_s`` (the ingress)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        # One immediate retry for a connection that went stale; a timeout is not tried twice.
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=30,
        max_connections=64,
    )


def sync_client(url: str, *, timeout_s: float = 10, connect_timeout_s: float = 5) -> redis.Redis:
    """A blocking client with the same bounded waits (the console, the metrics reader)."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s
    )


def require_reachable(url: str, *, timeout_s: float = 3) -> None:
    """Raise ConfigError naming REDIS_URL when nothing answers PING there."""
    client = sync_client(url, timeout_s=timeout_s, connect_timeout_s=timeout_s)
    try:
        client.ping()
    except RedisError as exc:
        raise ConfigError(f"REDIS_URL: no Redis answers there ({describe(exc, url)})") from None
    finally:
        client.close()


def describe(exc: BaseException, url: str) -> str:
    """A Redis error in one line, with the URL's credentials scrubbed."""
    return make_scrubber(url_secrets(url))(f"{type(exc).__name__}: {exc}".splitlines()[0])
