"""Every Redis client this product opens: one place for timeouts, keepalive and the URL.

The worker's state, the ingress, the console and the metrics reader all connect here, and the
broker's URL and transport options come from here too, so what a connection to Redis is
(bounded waits, health checks, which server) is decided once.

``REDIS_URL`` may name Sentinels (``sentinel://h1:26379,h2:26379/0?master=NAME``, parsed by
``config.redis_url``). A client then asks them for the current primary whenever it opens a
connection, and drops connections to a primary that was demoted, so every process follows a
failover without a restart. Replication to the standby is asynchronous: see
``wait_for_replicas`` for the writes whose loss in a failover matters.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.sentinel import Sentinel

from config import ConfigError
from config.redis_url import SentinelURL, parse_sentinel_url
from config.sensitive import url_secrets
from worker.keys import REPLICATION_PROBE
from worker.redact import make_scrubber


def async_client(
    url: str, *, timeout_s: float = 10, connect_timeout_s: float = 5, max_connections: int = 50
) -> aioredis.Redis:
    """An asyncio client with timeouts, so a half-open connection never hangs a caller."""
    return _async_client(
        url,
        max_connections=max_connections,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        health_check_interval=30,
        socket_keepalive=True,
    )


def async_fail_fast_client(url: str, timeout_s: float) -> aioredis.Redis:
    """An asyncio client whose every call gives up within about ``timeout_s`` (the ingress)."""
    return _async_client(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        # One immediate retry for a connection that went stale; a timeout is not tried twice.
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=30,
        max_connections=64,
        # A burst of requests waits its turn for a connection instead of failing with
        # MaxConnectionsError (answered 503 as if Redis were down).
        pool_wait_s=timeout_s,
    )


def sync_client(url: str, *, timeout_s: float = 10, connect_timeout_s: float = 5) -> redis.Redis:
    """A blocking client with the same bounded waits (the console, the metrics reader)."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": connect_timeout_s,
    }
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return redis.Redis.from_url(url, **options)
    manager = Sentinel(  # type: ignore[no-untyped-call]
        sentinel.sentinels,
        sentinel_kwargs=_sentinel_kwargs(sentinel, connect_timeout_s),
    )
    client: _SentinelRedis = manager.master_for(  # type: ignore[no-untyped-call]
        sentinel.master, redis_class=_SentinelRedis, **_login(sentinel), **options
    )
    client.sentinel_manager = manager
    return client


def kombu_broker(url: str, *, connect_timeout_s: float) -> tuple[str, dict[str, Any]]:
    """The broker URL kombu needs for ``url``, and the transport options that go with it.

    A plain Redis URL is kombu's as it is. For Sentinels, kombu wants one ``sentinel://`` URL
    a Sentinel, separated by ``;``, and the primary's name as a transport option.
    """
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return url, {}
    return sentinel.kombu_url(), {
        "master_name": sentinel.master,
        "sentinel_kwargs": _sentinel_kwargs(sentinel, connect_timeout_s),
    }


def require_reachable(url: str, *, timeout_s: float = 3) -> None:
    """Raise ConfigError naming REDIS_URL when no Redis there answers PING as asked.

    A server that answers but refuses (a database index it lacks, a wrong password) is said
    to be one: the fix is in the URL, not in bringing a server up.
    """
    client = sync_client(url, timeout_s=timeout_s, connect_timeout_s=timeout_s)
    try:
        client.ping()
    except (ResponseError, AuthenticationError) as exc:
        raise ConfigError(f"REDIS_URL: Redis answered but refused: {describe(exc, url)}") from None
    except RedisError as exc:
        raise ConfigError(f"REDIS_URL: no Redis answers there ({describe(exc, url)})") from None
    finally:
        client.close()


def describe(exc: BaseException, url: str) -> str:
    """A Redis error in one line, with the URL's credentials scrubbed."""
    return make_scrubber(url_secrets(url))(f"{type(exc).__name__}: {exc}".splitlines()[0])


class PrimaryChanged(RedisError):
    """The primary that answers is not the one that took the writes: a failover came between."""


async def primary_id(client: aioredis.Redis) -> str:
    """The current primary's replication id; every promotion (and restart) gives a new one."""
    info: dict[str, Any] = await client.info("replication")
    return str(info["master_replid"])


def primary_id_sync(client: redis.Redis) -> str:
    """``primary_id`` for a blocking client."""
    info: dict[str, Any] = client.info("replication")
    return str(info["master_replid"])


async def wait_for_replicas(
    client: aioredis.Redis, replicas: int, timeout_s: float, *, primary: str
) -> int:
    """Wait until ``replicas`` replicas hold every write the primary has taken so far.

    Returns how many do (at most ``replicas``; fewer when ``timeout_s`` ran out). Call it after
    the writes whose loss a failover must not cause, before acknowledging them (the ingress's
    202, the console's exit 0, a ledger record), with ``primary`` read by ``primary_id`` before
    those writes: if another primary answers now, a failover may have lost them and
    PrimaryChanged is raised, since a replica of the new primary proves nothing about them.

    ``WAIT`` counts the replicas that have this connection's last write, so a PUBLISH
    (replicated, touching no data) goes first on the same connection: replication is one
    ordered stream, so a replica that has it has every write the primary took before, from
    any client.
    """
    async with client.pipeline(transaction=False) as pipe:
        pipe.publish(REPLICATION_PROBE, b"")
        pipe.wait(replicas, _wait_ms(timeout_s))
        pipe.info("replication")
        _, acknowledged, info = await pipe.execute()
    return _replicated(int(acknowledged), info, primary)


def wait_for_replicas_sync(
    client: redis.Redis, replicas: int, timeout_s: float, *, primary: str
) -> int:
    """``wait_for_replicas`` for a blocking client (the console)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.publish(REPLICATION_PROBE, b"")
        pipe.wait(replicas, _wait_ms(timeout_s))
        pipe.info("replication")
        _, acknowledged, info = pipe.execute()
    return _replicated(int(acknowledged), info, primary)


def _replicated(acknowledged: int, info: dict[str, Any], primary: str) -> int:
    if str(info["master_replid"]) != primary:
        raise PrimaryChanged(
            "the primary changed (a failover) since the writes were made: they may be lost"
        )
    return acknowledged


def _wait_ms(timeout_s: float) -> int:
    # WAIT 0 would block for ever.
    return max(1, round(timeout_s * 1000))


# -- Sentinel ---------------------------------------------------------------------------------


class _SentinelRedis(redis.Redis):
    """A client of the primary that also closes its connections to the Sentinels."""

    sentinel_manager: Sentinel | None = None

    def close(self) -> None:
        super().close()
        if self.sentinel_manager is not None:
            self.sentinel_manager.close()


class _AsyncSentinelRedis(aioredis.Redis):
    """The asyncio kind."""

    sentinel_manager: AsyncSentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            await self.sentinel_manager.aclose()


def _async_client(url: str, *, pool_wait_s: float | None = None, **options: Any) -> aioredis.Redis:
    sentinel = parse_sentinel_url(url)
    # Only a direct URL waits for a pooled connection: redis-py's Sentinel pool has no blocking
    # form, so through Sentinel a burst past max_connections still fails at once.
    if sentinel is None and pool_wait_s is not None:
        pool = aioredis.BlockingConnectionPool.from_url(url, timeout=pool_wait_s, **options)
        return aioredis.Redis.from_pool(pool)  # closed with the client
    if sentinel is None:
        return aioredis.Redis.from_url(url, **options)
    manager = AsyncSentinel(  # type: ignore[no-untyped-call]
        sentinel.sentinels,
        sentinel_kwargs=_sentinel_kwargs(sentinel, options["socket_connect_timeout"]),
    )
    client: _AsyncSentinelRedis = manager.master_for(
        sentinel.master, redis_class=_AsyncSentinelRedis, **_login(sentinel), **options
    )
    client.sentinel_manager = manager
    return client


def _sentinel_kwargs(sentinel: SentinelURL, timeout_s: float) -> dict[str, Any]:
    """How to talk to the Sentinels themselves: briefly, and with their own password.

    Plain values only: kombu keeps them in the worker's configuration, which Flower reads
    as JSON (``inspect conf``).
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        # Each Sentinel is asked once per lookup (None = no retry): redis-py's default (ten
        # retries with backoff) would spend seconds on a Sentinel that is down before asking
        # the next. The lookup itself is retried with the command that needed it.
        "retry": None,
    }
    if sentinel.sentinel_password:
        kwargs["password"] = sentinel.sentinel_password
    return kwargs


def _login(sentinel: SentinelURL) -> dict[str, Any]:
    """The database and credentials for the primary."""
    return {"db": sentinel.db, "username": sentinel.username, "password": sentinel.password}


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients here return bytes unless told otherwise)."""
    return value.decode() if isinstance(value, bytes) else value
