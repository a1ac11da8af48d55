"""Celery tasks: thin wiring of the pipeline's decisions onto queues.

``worker.tasks.enrich_session`` (one session id) is the contract for producers elsewhere;
``enrich_batch`` carries several ids per message so Celery's per-message cost is shared.
Every id keeps its own retries, dead letter and delivery record either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Reject, Retry

from worker.app import app, settings
from worker.producer import Producer
from worker.retry import RetryPolicy
from worker.work import Work

if TYPE_CHECKING:
    from worker.pipeline import Pipeline, StageResult

log = logging.getLogger("worker.tasks")
producer = Producer(app)

# A stage that fails as a whole (Redis away, a bug) is not any session's fault: its message is
# tried again with backoff for as long as it takes, never dead-lettered for it.
_WHOLE_MESSAGE_RETRY = RetryPolicy(base_s=1.0, max_s=min(30.0, settings.retry.backoff_max_s))


def _process(
    task: Task, stage: str, run_stage: Callable[[Pipeline], Coroutine[Any, Any, StageResult]]
) -> None:
    """Run a stage and queue what it decided; on a failure of the whole, retry the message."""
    # Imported here, in the pool process, not in the prefork parent: the parent never runs a
    # stage, and every module it loads is counted again in each child's resident memory.
    from worker.runtime import get_runtime

    try:
        runtime = get_runtime(settings)
        result = runtime.run(run_stage(runtime.pipeline))
        _dispatch(result, stage)
    except Exception as exc:
        countdown = _WHOLE_MESSAGE_RETRY.delay_s(task.request.retries + 1)
        log.warning(
            "stage failed as a whole; message retried",
            extra={"stage": stage, "outcome": type(exc).__name__, "delay_s": round(countdown, 3)},
        )
        try:
            task.retry(exc=exc, countdown=countdown, max_retries=None)
        except Retry:
            raise
        except Exception as publish_error:
            # Could not even queue the retry: hand the message back to the broker. If Redis is
            # gone altogether, it stays unacknowledged and returns after the visibility timeout.
            raise Reject(type(publish_error).__name__, requeue=True) from publish_error


def _dispatch(result: StageResult, stage: str) -> None:
    """Queue deliveries per sink, and each retry after its own delay."""
    with producer.session():
        for sink, works in result.deliveries.items():
            producer.send_deliveries(sink, works)
        for work, delay in result.retries:
            if stage == "fetch":
                producer.send_fetches([work], countdown=delay)
            else:
                producer.send_deliveries(stage, [work], countdown=delay)


@app.task(name="worker.tasks.enrich_session", bind=True)
def enrich_session(self: Task, session_id: Any, trigger: dict[str, Any] | None = None) -> None:
    """Fetch, validate and enrich one session, then queue its delivery to every sink."""
    # A foreign producer may send anything: keep it (bounded) so it can be dead-lettered.
    text = session_id if isinstance(session_id, str) else repr(session_id)
    work = Work(text[:256], trigger=trigger)
    _process(self, "fetch", lambda pipeline: pipeline.fetch([work]))


@app.task(name="worker.tasks.enrich_batch", bind=True)
def enrich_batch(self: Task, items: list[dict[str, Any]]) -> None:
    """The same as enrich_session for several sessions in one message."""
    batch = [Work.from_message(item) for item in items]
    _process(self, "fetch", lambda pipeline: pipeline.fetch(batch))


@app.task(name="worker.tasks.deliver", bind=True)
def deliver(self: Task, sink: str, items: list[dict[str, Any]]) -> None:
    """Deliver built payloads to one sink."""
    batch = [Work.from_message(item) for item in items]
    _process(self, sink, lambda pipeline: pipeline.deliver(sink, batch))
