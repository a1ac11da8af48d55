"""Celery settings derived from ours: at-least-once delivery over a Redis broker."""

from __future__ import annotations

from typing import Any

from kombu.entity import Queue

from config import ConfigError, Settings

FETCH_QUEUE = "enrich"
SINK_QUEUES = {"webhook": "deliver.webhook", "stream": "deliver.stream"}


def delivery_queue(sink: str) -> str:
    """The queue a sink's deliveries wait in, so a slow sink never holds up another."""
    return SINK_QUEUES.get(sink, f"deliver.{sink}")


def task_time_limit_s(settings: Settings) -> int:
    """The hard limit for one task: room for a batch to wait out its slowest request, twice."""
    slowest = max(settings.funnelfox.timeout_s, settings.webhook.timeout_s)
    return int(4 * slowest + 60)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for at-least-once delivery over a Redis broker."""
    visibility = settings.visibility_timeout_s
    transport = {
        # Unacknowledged messages are redelivered after this long: it must exceed any task's
        # run time and any retry countdown (checked at start; celery#2599, kombu#337).
        "visibility_timeout": visibility,
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 25,
        "retry_on_timeout": True,
        "max_connections": max(20, 4 * settings.worker_concurrency),
    }
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": FETCH_QUEUE,
        # A worker consumes every queue unless told otherwise (-Q), so one process is enough;
        # dedicated workers per queue are a -Q away.
        "task_queues": [Queue(FETCH_QUEUE), *(Queue(q) for q in SINK_QUEUES.values())],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_time_limit": task_time_limit_s(settings),
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency,
        # Flower sees every task from the moment it is queued.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }


def check_worker_limits(settings: Settings) -> None:
    """Refuse limits that would let Redis redeliver a message a worker still holds."""
    settings.check_for_worker()
    limit = task_time_limit_s(settings)
    if limit >= settings.visibility_timeout_s:
        raise ConfigError(
            f"a task may run {limit} s (from FUNNELFOX_TIMEOUT_S and WEBHOOK_TIMEOUT_S), "
            f"which must stay below VISIBILITY_TIMEOUT_S ({settings.visibility_timeout_s})"
        )
