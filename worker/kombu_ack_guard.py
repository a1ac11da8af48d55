"""A guard for kombu's Redis transport when an acknowledgement does not reach Redis.

kombu's Redis ``QoS.ack`` (and ``reject``) removes the message from Redis's unacked hash first
and frees the channel's prefetch slot only after that succeeded. When the command fails (a
dropped connection, Redis restarting), Celery logs "Couldn't ack" and goes on, but the slot
stays taken for as long as the channel lives. A worker with ``worker_prefetch_multiplier = 1``
has as many slots as pool processes, so two failed acks on a two-process worker stopped it for
good: connected, answering pings, never taking a message again (seen in tests/test_netfault.py
with kombu 5.7.0: every worker of the fleet idle, 236 of 247 accepted sessions waiting).

The guard frees the slot whatever Redis answered, then raises as before. A message whose ack
did not reach Redis is still in the unacked hash, and comes back after the visibility timeout
like any message a worker took and did not finish: at least once, and the delivery records
keep it from being delivered twice.

No upstream report of this cause was found (kombu's and Celery's issues searched for a failed
ack that keeps its prefetch slot); the nearest is a report of the same symptom with no cause
named, https://github.com/celery/celery/issues/10205 (a worker that stops consuming after a
Redis connection reset).

Applied only to kombu 5.7.x, like ``kombu_restore_guard``, with a warning and left out on any
other version. Verified: kombu 5.7.0 only, the one version installed here; its ``QoS.ack`` and
``reject`` (``kombu/transport/redis.py``) and ``virtual.QoS.ack`` were read, and the guard run
in ``tests/test_netfault.py`` and ``tests/test_kombu_ack_guard.py``. Later 5.7 patch releases
are taken on trust; no other minor version was read or run.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from packaging.version import Version

log = logging.getLogger("worker.kombu_ack_guard")

VERIFIED = (Version("5.7"), Version("5.8"))  # [from, to): 5.7.x, around the 5.7.0 read and run

# What ack and reject were when install() ran: kombu's own, or another guard's around them
# (worker.kombu_restore_guard's full-Redis guard is installed first and stays in the chain).
_wrapped: dict[str, Any] = {
    "ack": kombu_redis.QoS.ack,
    "reject": kombu_redis.QoS.reject,
}


def _ack(self: Any, delivery_tag: Any) -> None:
    try:
        _wrapped["ack"](self, delivery_tag)
    except BaseException:
        # The slot is free; Redis still holds the message and redelivers it.
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        raise


def _reject(self: Any, delivery_tag: Any, requeue: bool = False) -> None:
    try:
        _wrapped["reject"](self, delivery_tag, requeue=requeue)
    except BaseException:
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        raise


def applies_to(version: str) -> bool:
    """Whether this guard was verified against kombu ``version``."""
    low, high = VERIFIED
    return low <= Version(version) < high


def install(version: str = kombu.__version__) -> bool:
    """Patch the Redis QoS once (idempotent); False, with a warning, on another kombu."""
    if not applies_to(version):
        log.warning(
            "kombu %s is outside the versions the ack guard was verified against "
            "(%s to below %s): not applied; see worker/kombu_ack_guard.py",
            version,
            *VERIFIED,
        )
        return False
    if kombu_redis.QoS.ack is not _ack:  # idempotent: never wrap itself
        _wrapped["ack"] = kombu_redis.QoS.ack
        _wrapped["reject"] = kombu_redis.QoS.reject
        kombu_redis.QoS.ack = _ack  # type: ignore[method-assign]
        kombu_redis.QoS.reject = _reject  # type: ignore[method-assign]
    return True
