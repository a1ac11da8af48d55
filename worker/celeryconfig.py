"""Celery settings derived from ours: at-least-once delivery over a Redis broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from config import ConfigError, Settings
from worker.keys import FETCH_QUEUE, delivery_queue
from worker.producer import own_queue
from worker.redis_clients import kombu_broker


def task_time_limit_s(settings: Settings) -> int:
    """The hard limit for one task: TASK_TIME_LIMIT_S, or room for its slowest request, thrice.

    A batch runs its requests concurrently, and each is bounded by connect, pool and read
    timeouts, so three timeouts and a margin cover any task that is not stuck.
    """
    if settings.task_time_limit_s is not None:
        return settings.task_time_limit_s
    slowest = max(settings.funnelfox.timeout_s, settings.slowest_delivery_s)
    return int(3 * slowest + 10)


def restore_interval_s(settings: Settings) -> int:
    """How often a live worker sweeps for messages a dead one held (kombu: every 100 s).

    A message is back in work once it is older than the visibility timeout and a sweep runs,
    so sweeping every quarter of it (at most every 10 s) bounds that by 1.25 × the timeout.
    """
    return max(1, min(10, settings.visibility_timeout_s // 4))


def broker_connection(redis_url: str) -> tuple[str, dict[str, Any]]:
    """The broker's URL and the transport options of a long-lived process's connection to it
    (a worker's, Flower's)."""
    # A Sentinel REDIS_URL becomes kombu's URL list and the primary's name (redis_clients).
    broker_url, sentinel = kombu_broker(redis_url, connect_timeout_s=5)
    return broker_url, {
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 25,
        # No redis-py retry on kombu's connections (kombu's default). With one, a dropped
        # connection to a Redis that is still up hung the worker's main process for good: the
        # retry reconnects the broadcast PUB/SUB connection inside a read that redis-py 8 lets
        # block forever, so nothing was consumed, acknowledged or reconciled again (found with
        # workshop/faultproxy.py, tests/test_netfault.py). Without it, the error reaches kombu,
        # which reconnects; it also keeps writes from being sent twice behind kombu's back.
        "retry_on_timeout": False,
        **sentinel,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for at-least-once delivery over a Redis broker."""
    visibility = settings.visibility_timeout_s
    broker_url, connection = broker_connection(settings.redis_url)
    transport = {
        **connection,
        # Unacknowledged messages are redelivered after this long: it must exceed any task's
        # run time and any retry countdown (checked at start; celery#2599, kombu#337).
        "visibility_timeout": visibility,
        "max_connections": max(20, 4 * settings.worker_concurrency),
        "unacked_restore_interval": restore_interval_s(settings),
        # The sweep holds a lock in Redis while it runs (milliseconds). kombu's default expiry
        # (300 s) means that a worker dying, or Redis restarting, mid-sweep blocks every sweep
        # for five minutes (seen in tests/test_chaos.py). A concurrent sweep is harmless:
        # each restore is a WATCH/MULTI transaction on the unacked hash.
        "unacked_mutex_expire": restore_interval_s(settings),
        # 1 = scan on every sweep; the default (10) would make the period ten times longer.
        "unacked_restore_throttle": 1,
    }
    # A worker consumes every queue unless told otherwise (-Q), so one process is enough;
    # dedicated workers per queue are a -Q away.
    return {
        **_broker_and_queues(broker_url, transport, settings.enabled_sinks),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task that hits its time limit goes back to the queue rather than being acked away.
        "task_acks_on_failure_or_timeout": False,
        "task_time_limit": task_time_limit_s(settings),
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency,
        # Flower sees every task from the moment it is queued.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }


def flower_config(redis_url: str, destinations: Sequence[str]) -> dict[str, Any]:
    """Celery settings for Flower's app: the broker, and the queues its broker page lists
    while no worker is online to name its own; nothing a worker reads."""
    broker_url, transport = broker_connection(redis_url)
    return _broker_and_queues(broker_url, transport, destinations)


def _broker_and_queues(
    broker_url: str, transport: dict[str, Any], destinations: Sequence[str]
) -> dict[str, Any]:
    """What the worker's and Flower's apps share: the broker, JSON, no results, and the
    fetch queue with one per destination (a slow destination backs up its own)."""
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": FETCH_QUEUE,
        "task_queues": [
            own_queue(FETCH_QUEUE),
            *(own_queue(delivery_queue(name)) for name in destinations),
        ],
    }


def check_worker_limits(settings: Settings) -> None:
    """Refuse limits that would let Redis redeliver a message a worker still holds."""
    settings.check_for_worker()
    limit = task_time_limit_s(settings)
    if limit >= settings.reconcile_after_s:
        # A session a worker is still working on would be published again by the reconciler.
        raise ConfigError(
            f"a task may run {limit} s (TASK_TIME_LIMIT_S, or derived from the timeouts), "
            f"which must stay below RECONCILE_AFTER_S ({settings.reconcile_after_s})"
        )
    if limit >= settings.visibility_timeout_s:
        raise ConfigError(
            f"a task may run {limit} s (TASK_TIME_LIMIT_S, or derived from the timeouts), "
            f"which must stay below VISIBILITY_TIMEOUT_S ({settings.visibility_timeout_s})"
        )
