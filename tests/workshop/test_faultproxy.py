"""The fault proxy: forwards a real Redis conversation, cuts requests and replies, loopback only."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from workshop.faultproxy import FaultProxy, require_loopback
from workshop.redis_server import EmbeddedRedis, free_port


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    """A Redis of this module's own: raw connections here use its database 0."""
    with EmbeddedRedis() as embedded:
        yield embedded


@pytest.fixture
def redis_client(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def proxy(server: EmbeddedRedis) -> Iterator[FaultProxy]:
    with FaultProxy(server.port, seed=7) as started:
        yield started


def through(proxy: FaultProxy) -> redis.Redis:
    """A client through the proxy that never retries by itself."""
    return redis.Redis.from_url(proxy.url(), retry=Retry(NoBackoff(), 0), socket_timeout=5)


def incr_once(port: int) -> bool:
    """One INCR on a connection of its own, no handshake; whether its reply came whole."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INCR fp:count\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            try:
                data = sock.recv(64)
            except ConnectionError:
                return False
            if not data:
                return False
            reply += data
        return reply.startswith(b":")


def test_without_cuts_everything_is_forwarded(proxy: FaultProxy, redis_client: redis.Redis) -> None:
    client = through(proxy)
    big = b"x" * 300_000  # several chunks each way
    assert client.set("fp:big", big)
    assert client.get("fp:big") == big
    with client.pipeline(transaction=False) as pipe:
        for n in range(500):
            pipe.rpush("fp:list", n)
        pipe.execute()
    assert redis_client.llen("fp:list") == 500
    assert proxy.cuts.total == 0
    assert proxy.connections >= 1
    client.close()


def test_a_cut_request_never_runs_and_a_cut_reply_ran(
    proxy: FaultProxy, redis_client: redis.Redis
) -> None:
    proxy.cut_rate = 0.3
    answered = sum(incr_once(proxy.port) for _ in range(300))
    cuts = proxy.cuts
    assert cuts.request > 30
    assert cuts.reply > 30
    assert answered + cuts.total == 300
    # One command per chunk: a cut request is never whole, so it never ran; a cut reply's
    # command ran and its answer was lost.
    assert int(redis_client.get("fp:count") or 0) == answered + cuts.reply


def test_every_chunk_cut_at_rate_one(proxy: FaultProxy, redis_client: redis.Redis) -> None:
    proxy.cut_rate = 1.0
    client = through(proxy)
    for _ in range(5):
        with pytest.raises(redis.ConnectionError):
            client.incr("fp:never")
    assert proxy.cuts.request == 5
    assert redis_client.get("fp:never") is None
    proxy.cut_rate = 0.0
    assert client.incr("fp:never") == 1
    client.close()


def test_requests_holding_a_pattern_are_cut_before_it(
    proxy: FaultProxy, redis_client: redis.Redis
) -> None:
    proxy.cut_requests_containing = b"INCR"
    assert not incr_once(proxy.port)
    assert proxy.cuts.request == 1
    assert redis_client.get("fp:count") is None
    client = through(proxy)
    assert client.set("fp:other", 1)  # other commands go through
    proxy.cut_requests_containing = None
    assert incr_once(proxy.port)
    client.close()


def test_sever_all_closes_every_open_connection(proxy: FaultProxy) -> None:
    socks = [socket.create_connection(("127.0.0.1", proxy.port), timeout=5) for _ in range(3)]
    for sock in socks:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
    assert proxy.sever_all() == 3
    for sock in socks:
        assert sock.recv(64) == b""  # closed by the proxy
        sock.close()
    assert proxy.cuts.total == 0
    assert incr_once(proxy.port)  # new connections go through


def test_an_upstream_that_is_down_closes_the_client() -> None:
    with FaultProxy(free_port()) as proxy:
        client = redis.Redis(port=proxy.port, retry=Retry(NoBackoff(), 0), socket_timeout=5)
        with pytest.raises(redis.ConnectionError):
            client.ping()
        client.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_is_accepted(host: str) -> None:
    assert require_loopback(host) == host


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.1", "8.8.8.8", "0.0.0.0", "redis"])
def test_anything_else_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        require_loopback(host)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(6379, upstream_host=host)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(6379, host=host)


def test_the_rate_is_a_probability() -> None:
    with pytest.raises(ValueError, match="cut_rate"):
        FaultProxy(6379, cut_rate=1.5)
