"""Publishing ``enrich_session`` tasks to the broker, with every wait bounded.

The web process does not import ``worker.app`` (that would load the worker's settings and its
sink checks): it keeps its own small Celery app, configured only to produce, whose calls give
up within about ``timeout_s`` instead of retrying the way a worker should.
"""

from __future__ import annotations

from typing import Any, Protocol

from celery import Celery

from worker.celeryconfig import FETCH_QUEUE as QUEUE
from worker.celeryconfig import own_queue

TASK_NAME = "worker.tasks.enrich_session"
POOL_SIZE = 16


class Publisher(Protocol):
    """Where the ingress sends tasks; a stub in tests that need a broken broker and Redis up."""

    def publish(self, session_id: str, trigger: dict[str, Any]) -> None:
        """Return once the task is in the broker; raise if it is not."""

    def close(self) -> None:
        """Release connections."""


def producer_config(broker_url: str, timeout_s: float) -> dict[str, Any]:
    """Celery settings for a producer that fails fast when the broker is away."""
    return {
        "broker_url": broker_url,
        "broker_transport_options": {
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s,
            "retry_on_timeout": False,
            # kombu otherwise retries a refused connection for ~6 s before raising.
            "max_retries": 0,
        },
        "broker_connection_retry": False,
        "broker_pool_limit": POOL_SIZE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": QUEUE,
        "task_queues": [own_queue(QUEUE)],
        "task_send_sent_event": True,
    }


# One immediate second try: a pooled connection may have gone stale while Redis restarted.
_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0, "interval_max": 0}


class CeleryPublisher:
    """Sends ``enrich_session`` by name; blocking, so the app calls it from a thread."""

    def __init__(self, broker_url: str, *, timeout_s: float) -> None:
        self._app = Celery("funnelfox-enricher-ingress", set_as_current=False)
        self._app.conf.update(producer_config(broker_url, timeout_s))

    def publish(self, session_id: str, trigger: dict[str, Any]) -> None:
        """Publish one task; kombu's OperationalError (or a socket error) if it did not go."""
        self._app.send_task(
            TASK_NAME,
            args=(session_id,),
            kwargs={"trigger": trigger},
            retry=True,
            retry_policy=_RETRY_POLICY,
            argsrepr=repr((session_id,)),
        )

    def close(self) -> None:
        """Close the pooled broker connections."""
        self._app.close()
