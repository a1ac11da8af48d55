"""Guards for kombu's Redis transport: a broker that vanishes mid-restore, and a full Redis.

**Restore on a closed connection.** When Redis goes away while a worker holds unacknowledged
messages, kombu closes the broker connection, drops the transport's client, and then tries to
restore those messages through it: ``Channel._connparams`` reads ``None.hostname`` and the
AttributeError escapes Celery's ``ignore_errors``, so the worker dies ("Unrecoverable error");
the same AttributeError is reported upstream as https://github.com/celery/kombu/issues/582.
Raising the connection error kombu expects instead lets the worker reconnect; the messages it
could not restore stay in Redis's unacked hash and come back after the visibility timeout, as
after any lost connection.

**A full Redis.** Past ``maxmemory`` with ``noeviction``, Redis refuses every command that may
grow memory and every command queued inside MULTI. kombu's bookkeeping of unacknowledged
messages is made of such commands: acknowledging (MULTI ZREM HDEL), requeueing (MULTI …
LPUSH) and recording a message it has just popped (MULTI ZADD HSET). The OutOfMemoryError
reaches the worker's main process, where Celery does not recover from it ("Unrecoverable
error: OutOfMemoryError"), and the messages it held wait for the visibility timeout (an hour).
No upstream report of this crash was found; celery/celery#5716 ("Celery deadlocks on redis
OOM") is the nearest. Guarded, per channel:

- an acknowledgement (or a reject that drops the message) removes the message's two entries
  without MULTI: HDEL and ZREM are allowed on a full Redis, and they free memory;
- a requeue that Redis refuses (a task that could not even queue its own retry) leaves the
  message in the unacked hash, where a crash cannot lose it, to be requeued later;
- a message popped that Redis refuses to record is held in memory, not handed to a task;
- while anything is held or waits to be requeued, the channel takes no new message
  (``QoS.can_consume``) and tries to write the backlog back with backoff (0.5 s doubling to
  10 s): a held message goes back to the head of its queue, a requeue is done;
- the sweep that restores abandoned messages skips its round instead of raising.

A held message lives only in the worker's memory until Redis takes writes again (through
reconnections: the backlog is the process's, not one channel's): a crash of the worker in
that time loses it (kombu's own gap between popping a message and recording it, widened to
the time Redis stays full; about one message per worker, since it stops consuming at once).
Closing a channel tries once more; exiting with messages still held logs them as lost.

Each guard is applied only to kombu 5.7.x, with a warning and left out on any other version,
since the internals it wraps may differ. What was verified, precisely: kombu 5.7.0 only, the
one version installed here. Its source was read (``kombu/transport/redis.py``: the Channel's
``_connparams`` and ``close``; the QoS's ``append``, ``ack``, ``reject``, ``can_consume`` and
``restore_visible``) and run: the restore guard seen crashing without it in
``tests/test_chaos.py`` and guarded there since, the full Redis guard tested in
``tests/test_full_redis.py`` and below. Later 5.7 patch releases are taken on trust that a
patch release keeps these internals; no other minor version was read or run.
"""

from __future__ import annotations

import atexit
import logging
import time
from dataclasses import dataclass, field
from queue import Empty
from typing import Any

import kombu
import redis.exceptions
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from packaging.version import Version

log = logging.getLogger("worker.kombu_restore_guard")

Range = tuple[Version, Version]
# [from, to): 5.7.x, around 5.7.0 (the one version read and run; see above).
VERIFIED: Range = (Version("5.7"), Version("5.8"))  # the restore guard
FULL_REDIS_VERIFIED: Range = (Version("5.7"), Version("5.8"))  # the full Redis guard
BACKOFF_S = (0.5, 10.0)  # first delay, cap

_OOM = redis.exceptions.OutOfMemoryError
_original_connparams = kombu_redis.Channel._connparams
_ORIGINAL: dict[str, Any] = {
    "append": kombu_redis.QoS.append,
    "ack": kombu_redis.QoS.ack,
    "reject": kombu_redis.QoS.reject,
    "can_consume": kombu_redis.QoS.can_consume,
    "restore_visible": kombu_redis.QoS.restore_visible,
    "close": kombu_redis.Channel.close,
}


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection.client is None:
        raise redis.exceptions.ConnectionError("broker connection already closed")
    return _original_connparams(self, asynchronous)  # type: ignore[no-untyped-call]


# -- a full Redis ----------------------------------------------------------------------------


class HeldBack(Empty):
    """A popped message Redis refused to record: held, not delivered (the poller skips it)."""


@dataclass
class Backlog:
    """What this process could not write to a full Redis, and when to try again."""

    held: list[tuple[Any, str, str]] = field(default_factory=list)  # payload, exchange, key
    unrequeued: list[str] = field(default_factory=list)  # delivery tags in the unacked hash
    failures: int = 0
    retry_at: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.held or self.unrequeued)

    def refused(self, what: str) -> None:
        """Redis refused a write: back off before the next try."""
        self.failures += 1
        first, cap = BACKOFF_S
        self.retry_at = time.monotonic() + min(cap, first * 2 ** (self.failures - 1))
        if self.failures == 1:
            log.warning(
                "Redis is full (maxmemory): %s; no new messages are taken until it takes "
                "writes again (tried with backoff)",
                what,
            )


# One per process: a worker's main process consumes through one channel at a time, and what it
# holds must outlive that channel (kombu opens a new one when the connection comes back, say
# after Redis was restarted to give it more memory).
BACKLOG = Backlog()


def _write_back(qos: Any, backlog: Backlog) -> None:
    channel = qos.channel
    while backlog.held:
        payload, exchange, routing_key = backlog.held[0]
        with channel.conn_or_acquire() as client:
            pipe = client.pipeline()
            # RPUSH: BRPOP takes from the right, so the message is the next one taken.
            channel._do_restore_message(payload, exchange, routing_key, pipe, False)
            pipe.execute()
        backlog.held.pop(0)
    while backlog.unrequeued:
        qos.restore_by_tag(backlog.unrequeued[0], leftmost=True)
        backlog.unrequeued.pop(0)


def flush(qos: Any, *, now: bool = False) -> bool:
    """Write the backlog back through ``qos``'s channel if Redis takes it (not before the
    backoff, unless ``now``); True when nothing is left."""
    backlog = BACKLOG
    if not backlog:
        return True
    if not now and time.monotonic() < backlog.retry_at:
        return False
    try:
        _write_back(qos, backlog)
    except redis.exceptions.RedisError:  # still full, or away: held as it is, tried later
        backlog.refused("still")
        return False
    log.info("Redis takes writes again: held and requeued messages are back in their queues")
    backlog.failures = 0
    return True


def _task_ids(backlog: Backlog) -> str:
    return ", ".join(str(payload.get("headers", {}).get("id")) for payload, _, _ in backlog.held)


def report_lost() -> None:
    """At exit: say which held messages never got back to their queue."""
    if BACKLOG.held:
        log.error(
            "Redis never took writes again: %d message(s) taken from their queue are lost "
            "(task ids %s)",
            len(BACKLOG.held),
            _task_ids(BACKLOG),
        )


def _forget(qos: Any, delivery_tag: str) -> None:
    """Drop a message's unacked entries without MULTI (allowed, and freeing, on a full Redis)."""
    with qos.channel.conn_or_acquire() as client:
        pipe = client.pipeline(transaction=False)
        pipe.hdel(qos.unacked_key, delivery_tag).zrem(qos.unacked_index_key, delivery_tag)
        pipe.execute()


def _append(self: Any, message: Any, delivery_tag: str) -> None:
    try:
        _ORIGINAL["append"](self, message, delivery_tag)
    except _OOM:
        info = message.delivery_info
        backlog = BACKLOG
        backlog.held.append((message._raw, info["exchange"], info["routing_key"]))
        backlog.refused("a message just taken from its queue is held in memory")
        raise HeldBack() from None


def _ack(self: Any, delivery_tag: str) -> None:
    try:
        _ORIGINAL["ack"](self, delivery_tag)
    except _OOM:
        _forget(self, delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]


def _reject(self: Any, delivery_tag: str, requeue: bool = False) -> None:
    try:
        _ORIGINAL["reject"](self, delivery_tag, requeue)
    except _OOM:
        if requeue:
            backlog = BACKLOG
            backlog.unrequeued.append(delivery_tag)
            backlog.refused("a message to requeue waits in the unacked hash")
        else:
            _forget(self, delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]


def _can_consume(self: Any) -> bool:
    if BACKLOG and not flush(self):
        return False
    return bool(_ORIGINAL["can_consume"](self))


def _restore_visible(self: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return _ORIGINAL["restore_visible"](self, *args, **kwargs)
    except _OOM:
        # Its lock is a SET: skipped this round, tried again at the next.
        log.debug("Redis is full: the unacked-restore sweep skips a round")
        return None


def _close(self: Any) -> Any:
    qos = getattr(self, "_qos", None)
    try:
        if qos is not None and BACKLOG and not flush(qos, now=True) and BACKLOG.held:
            log.warning(
                "Redis still refuses writes: %d message(s) taken from their queue stay held "
                "in memory (task ids %s), to be put back once it takes them; lost if this "
                "worker stops first",
                len(BACKLOG.held),
                _task_ids(BACKLOG),
            )
    finally:
        closed = _ORIGINAL["close"](self)
    return closed


# -- installing ------------------------------------------------------------------------------


def _within(version: str, verified: Range) -> bool:
    low, high = verified
    return low <= Version(version) < high


def applies_to(version: str) -> bool:
    """Whether every guard here was verified against kombu ``version``."""
    return _within(version, VERIFIED) and _within(version, FULL_REDIS_VERIFIED)


def _install_full_redis_guard() -> None:
    if kombu_redis.QoS.ack is not _ack:
        atexit.register(report_lost)
    kombu_redis.QoS.append = _append  # type: ignore[method-assign]
    kombu_redis.QoS.ack = _ack  # type: ignore[method-assign]
    kombu_redis.QoS.reject = _reject  # type: ignore[method-assign]
    kombu_redis.QoS.can_consume = _can_consume  # type: ignore[method-assign]
    kombu_redis.QoS.restore_visible = _restore_visible  # type: ignore[method-assign]
    kombu_redis.Channel.close = _close  # type: ignore[method-assign]


def install(version: str = kombu.__version__) -> bool:
    """Patch the Redis transport once (idempotent); False, with a warning, for every guard
    this kombu is outside the verified versions of."""
    applied = True
    for name, verified in (("restore", VERIFIED), ("full Redis", FULL_REDIS_VERIFIED)):
        if not _within(version, verified):
            log.warning(
                "kombu %s is outside the versions the %s guard was verified against "
                "(%s to below %s): not applied; see worker/kombu_restore_guard.py",
                version,
                name,
                *verified,
            )
            applied = False
        elif name == "restore":
            kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
        else:
            _install_full_redis_guard()
    return applied
