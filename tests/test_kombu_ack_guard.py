"""The kombu ack guard: a failed ack or reject never keeps a prefetch slot taken."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import redis.exceptions
from kombu.transport import redis as kombu_redis

from worker import kombu_ack_guard as guard
from worker import kombu_restore_guard as restore_guard


class BrokenPipe:
    """A pipeline whose connection is gone."""

    def zrem(self, *args: Any) -> BrokenPipe:
        return self

    def hdel(self, *args: Any) -> BrokenPipe:
        return self

    def execute(self) -> None:
        raise redis.exceptions.ConnectionError("Connection closed by server.")


class BrokenClient:
    def pipeline(self) -> BrokenPipe:
        return BrokenPipe()

    def transaction(self, *args: Any, **kwargs: Any) -> None:
        raise redis.exceptions.ConnectionError("Connection closed by server.")


@contextmanager
def broken(client: Any = None) -> Iterator[BrokenClient]:
    yield BrokenClient()


# kombu's own methods, as the other guard (installed first in a worker) kept them.
PRISTINE_ACK = restore_guard._ORIGINAL["ack"]
PRISTINE_REJECT = restore_guard._ORIGINAL["reject"]


@pytest.fixture
def unpatched() -> Iterator[None]:
    before = kombu_redis.QoS.ack, kombu_redis.QoS.reject, dict(guard._wrapped)
    kombu_redis.QoS.ack = PRISTINE_ACK  # type: ignore[method-assign]
    kombu_redis.QoS.reject = PRISTINE_REJECT  # type: ignore[method-assign]
    yield
    kombu_redis.QoS.ack, kombu_redis.QoS.reject, wrapped = before  # type: ignore[method-assign]
    guard._wrapped.update(wrapped)


def full_qos() -> Any:
    """A Redis QoS with its two prefetch slots taken, on a connection that is gone."""
    channel = SimpleNamespace(
        conn_or_acquire=broken,
        unacked_key="unacked",
        unacked_index_key="unacked_index",
        do_restore=False,
    )
    qos = kombu_redis.QoS(channel, prefetch_count=2)
    qos.restore_at_shutdown = False
    for tag in ("tag-1", "tag-2"):
        qos._quick_append(tag, SimpleNamespace(delivery_tag=tag))
    assert not qos.can_consume()
    return qos


@pytest.mark.usefixtures("unpatched")
def test_a_failed_ack_frees_its_slot_and_still_raises() -> None:
    qos = full_qos()
    with pytest.raises(redis.exceptions.ConnectionError):
        qos.ack("tag-1")
    # Unguarded, the slot stays taken for the channel's life: two of these and the worker
    # never takes a message again.
    assert not qos.can_consume()

    assert guard.install("5.7.0")
    with pytest.raises(redis.exceptions.ConnectionError):  # Celery logs "Couldn't ack"
        qos.ack("tag-2")
    assert qos.can_consume()


@pytest.mark.usefixtures("unpatched")
@pytest.mark.parametrize("requeue", [True, False])
def test_a_failed_reject_frees_its_slot_and_still_raises(requeue: bool) -> None:
    assert guard.install("5.7.0")
    qos = full_qos()
    with pytest.raises(redis.exceptions.ConnectionError):
        qos.reject("tag-1", requeue=requeue)
    assert qos.can_consume()


@pytest.mark.usefixtures("unpatched")
def test_another_kombu_is_left_alone_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert not guard.install("6.0.0")
    assert kombu_redis.QoS.ack is PRISTINE_ACK
    assert "outside the versions" in caplog.text


@pytest.mark.parametrize(
    ("version", "verified"),
    [("5.7.0", True), ("5.7.4", True), ("5.6.0", False), ("5.4.2", False), ("5.8.0", False)],
)
def test_only_kombu_5_7_is_guarded(version: str, verified: bool) -> None:
    """5.7.0 is the one version read and run; a 5.7 patch release is taken on trust."""
    assert guard.applies_to(version) is verified


def test_the_installed_kombu_is_one_it_was_verified_against() -> None:
    """When an upgrade moves kombu out of the range, this fails: re-verify, then widen."""
    import kombu

    assert guard.applies_to(kombu.__version__)


def test_in_a_worker_the_full_redis_guard_stays_in_the_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both guards wrap kombu's ack and reject; installed in the worker's order, the ack guard
    calls the full-Redis guard, which calls kombu (a worker died of OOM on reject when the ack
    guard held kombu's own method instead)."""
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")  # what worker.app needs to load
    import worker.app  # noqa: F401 - installs both, in order

    assert kombu_redis.QoS.reject is guard._reject
    assert guard._wrapped["reject"] is restore_guard._reject
    assert guard._wrapped["ack"] is restore_guard._ack
