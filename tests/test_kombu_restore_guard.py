"""The kombu restore guard: applied on the versions it was verified against, and what it does."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import redis.exceptions
from kombu import Connection, Exchange, Producer, Queue
from kombu.transport import redis as kombu_redis

from tests.test_full_redis import fill, free
from worker import kombu_restore_guard as guard
from workshop.redis_server import EmbeddedRedis

PATCHED = [
    (kombu_redis.Channel, "_connparams", guard._original_connparams),
    (kombu_redis.Channel, "close", guard._ORIGINAL["close"]),
    *(
        (kombu_redis.QoS, name, guard._ORIGINAL[name])
        for name in ("append", "ack", "reject", "can_consume", "restore_visible")
    ),
]


@pytest.fixture
def unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu as it comes (whatever importing worker.app installed), put back after the test."""
    for owner, name, original in PATCHED:
        monkeypatch.setattr(owner, name, original)


@pytest.mark.usefixtures("unpatched")
def test_a_closed_connection_raises_what_kombu_retries_not_attribute_error() -> None:
    channel = SimpleNamespace(connection=SimpleNamespace(client=None))
    # Unguarded, kombu reads None.hostname: the crash the guard exists for.
    with pytest.raises(AttributeError):
        kombu_redis.Channel._connparams(channel)
    assert guard.install("5.7.0")
    with pytest.raises(redis.exceptions.ConnectionError):
        kombu_redis.Channel._connparams(channel)


@pytest.mark.usefixtures("unpatched")
def test_another_kombu_is_left_alone_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert not guard.install("6.0.0")
    assert kombu_redis.Channel._connparams is guard._original_connparams
    assert kombu_redis.QoS.ack is guard._ORIGINAL["ack"]
    assert "outside the versions the restore guard" in caplog.text
    assert "outside the versions the full Redis guard" in caplog.text


@pytest.mark.parametrize(
    ("version", "verified"),
    [("5.7.0", True), ("5.7.4", True), ("5.6.0", False), ("5.4.2", False), ("5.8.0", False)],
)
@pytest.mark.usefixtures("unpatched")
def test_only_kombu_5_7_is_guarded(
    version: str, verified: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """5.7.0 is the one version read and run; a 5.7 patch release is taken on trust."""
    caplog.set_level(logging.WARNING)
    assert guard.install(version) is verified
    assert guard.applies_to(version) is verified
    assert ("outside the versions the restore guard" in caplog.text) is not verified


def test_the_installed_kombu_is_one_it_was_verified_against() -> None:
    """When an upgrade moves kombu out of the range, this fails: re-verify, then widen."""
    import kombu

    assert guard.applies_to(kombu.__version__)


# -- a full Redis: kombu's bookkeeping against a real Redis past its maxmemory ----------------


@pytest.fixture
def guarded(unpatched: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "BACKLOG", guard.Backlog())
    assert guard.install("5.7.0")


@pytest.fixture
def full_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(maxmemory=str(SMALL)) as server:
        yield server


@pytest.fixture
def channel(full_redis: EmbeddedRedis, guarded: None) -> Iterator[Any]:
    with Connection(full_redis.url) as connection:
        chan = connection.channel()
        Queue("q", Exchange("q"), "q")(chan).declare()
        yield chan


SMALL = 2 * 1024 * 1024


def _publish(channel: Any, body: dict[str, int]) -> None:
    Producer(channel).publish(body, exchange="q", routing_key="q")


def _client(channel: Any) -> redis.Redis:
    return redis.Redis.from_url(channel.connection.client.as_uri(include_password=True))


def test_an_ack_on_a_full_redis_frees_the_message(channel: Any) -> None:
    _publish(channel, {"n": 1})
    message = channel.basic_get("q")
    client = _client(channel)
    filler = fill(client, SMALL)
    channel.qos.ack(message.delivery_tag)  # MULTI would be refused: OutOfMemoryError
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0
    free(client, filler, SMALL)


def test_a_refused_requeue_waits_in_the_unacked_hash_and_is_done_later(channel: Any) -> None:
    _publish(channel, {"n": 1})
    message = channel.basic_get("q")
    client = _client(channel)
    filler = fill(client, SMALL)
    channel.qos.reject(message.delivery_tag, requeue=True)
    assert client.hlen("unacked") == 1, "kept where a crash cannot lose it"
    assert not channel.qos.can_consume(), "no new message while Redis is full"
    free(client, filler, SMALL)
    assert guard.flush(channel.qos, now=True)
    assert channel.qos.can_consume()
    assert client.hlen("unacked") == 0
    assert channel.basic_get("q").payload == {"n": 1}


def test_a_message_popped_from_a_full_redis_is_held_and_put_back_first(channel: Any) -> None:
    _publish(channel, {"n": 1})
    _publish(channel, {"n": 2})
    client = _client(channel)
    filler = fill(client, SMALL)
    assert channel.basic_get("q") is None, "popped, but not handed to a task"
    assert not channel.qos.can_consume()
    assert not guard.flush(channel.qos, now=True), "still full"
    free(client, filler, SMALL)
    assert guard.flush(channel.qos, now=True)
    assert channel.basic_get("q").payload == {"n": 1}, "back at the head of its queue"
    assert channel.basic_get("q").payload == {"n": 2}


def test_a_held_message_outlives_its_channel_and_goes_back_through_the_next(
    channel: Any, full_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    _publish(channel, {"n": 1})
    client = _client(channel)
    filler = fill(client, SMALL)
    assert channel.basic_get("q") is None
    caplog.set_level(logging.WARNING)
    channel.close()  # as when the connection is lost and kombu opens another
    assert "1 message(s) taken from their queue stay held" in caplog.text
    free(client, filler, SMALL)
    with Connection(full_redis.url) as connection:
        again = connection.channel()
        assert not again.qos.can_consume(), "still backing off after the failed try"
        assert guard.flush(again.qos, now=True), "put back through the new channel"
        assert again.qos.can_consume()
        assert again.basic_get("q").payload == {"n": 1}


def test_messages_still_held_at_exit_are_reported_lost(
    channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _publish(channel, {"n": 1})
    client = _client(channel)
    filler = fill(client, SMALL)
    assert channel.basic_get("q") is None
    caplog.set_level(logging.ERROR)
    guard.report_lost()
    assert "1 message(s) taken from their queue are lost" in caplog.text
    free(client, filler, SMALL)
