"""The Celery app Flower runs on (``celery -A worker.flower_app flower``): the broker only.

Flower watches the workers through the broker (task events, inspect and control broadcasts)
and reads queue lengths from Redis; it runs no task. So its app is built from ``REDIS_URL``
alone, never from a worker's settings, and Flower starts on a host without sink variables.
While no worker is online to name its queues, the broker page lists the fetch queue and the
delivery queues of the destinations workers registered (``ffe:sinks``). The tasks it knows
by name (for its rate-limit, time-limit and apply buttons) are stand-ins: a message sent
through one is run by a worker, never here.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from redis.exceptions import RedisError

from config import ConfigError
from config.settings import load_redis_url
from worker import kombu_ack_guard, kombu_restore_guard
from worker.celeryconfig import flower_config
from worker.fleet import registered_sinks
from worker.producer import TASK_NAMES
from worker.redis_clients import sync_client


def _runs_in_a_worker(*_: Any, **__: Any) -> None:
    raise RuntimeError("this task runs in a worker, never in Flower")


def registered_destinations(redis_url: str) -> list[str]:
    """The destinations workers registered; none when Redis cannot say (Flower starts anyway,
    and every worker it sees names its own queues)."""
    client = sync_client(redis_url)
    try:
        return registered_sinks(client)
    except RedisError:
        return []
    finally:
        client.close()


def build(redis_url: str) -> Celery:
    """Flower's app for the broker at ``redis_url``."""
    app = Celery("funnelfox-enricher")
    app.conf.update(flower_config(redis_url, registered_destinations(redis_url)))
    for name in TASK_NAMES:
        # Not shared: a stand-in must never replace a real task in another app of the process.
        app.task(name=name, shared=False)(_runs_in_a_worker)
    return app


def _load() -> Celery:
    try:
        redis_url = load_redis_url()
    except ConfigError as exc:
        print(f"funnelfox-enricher flower: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # Flower's broker connections go through the same kombu transport as a worker's.
    kombu_restore_guard.install()
    kombu_ack_guard.install()
    return build(redis_url)


app = _load()
