"""Celery tasks: thin wiring of the pipeline's decisions onto queues.

``worker.tasks.enrich_session`` (one session id) is the contract for producers elsewhere;
``enrich_batch`` carries several ids per message so Celery's per-message cost is shared.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from celery import Task
from celery.exceptions import Reject, Retry

from worker.app import app, settings
from worker.celeryconfig import delivery_queue
from worker.pipeline import StageResult
from worker.runtime import get_runtime
from worker.work import Work

log = logging.getLogger("worker.tasks")

# Infrastructure failures (Redis away, a bug) are not a session's fault: the whole message
# is tried again with backoff, never dead-lettered for it.
_INFRA_RETRY_MAX_S = 30.0


def _describe(batch: Sequence[Work]) -> str:
    ids = ", ".join(w.session_id for w in batch[:3])
    more = f" +{len(batch) - 3}" if len(batch) > 3 else ""
    return f"[{ids}{more}]"


def _run(task: Task, stage: str, coroutine: Coroutine[Any, Any, StageResult]) -> StageResult:
    """Run a stage; if it fails as a whole, the message is tried again, never dropped."""
    try:
        return get_runtime(settings).run(coroutine)
    except Exception as exc:
        countdown = min(_INFRA_RETRY_MAX_S, 2.0**task.request.retries)
        log.warning(
            "stage %s failed as a whole (%s); message retried in %.0f s",
            stage,
            type(exc).__name__,
            countdown,
        )
        try:
            task.retry(exc=exc, countdown=countdown, max_retries=None)
        except Retry:
            raise
        except Exception as publish_error:
            # Could not even queue the retry: give the message back to the broker.
            raise Reject(type(publish_error).__name__, requeue=True) from publish_error
        raise


def _dispatch(result: StageResult, stage: str) -> None:
    """Queue what the stage decided: deliveries per sink and retries after their delays."""
    for sink, works in result.deliveries.items():
        deliver.apply_async(
            (sink, [w.to_message() for w in works]),
            queue=delivery_queue(sink),
            argsrepr=f"({sink!r}, {_describe(works)})",
        )
    for work, delay in result.retries:
        if stage == "fetch":
            enrich_batch.apply_async(
                ([work.to_message()],), countdown=delay, argsrepr=_describe([work])
            )
        else:
            deliver.apply_async(
                (stage, [work.to_message()]),
                queue=delivery_queue(stage),
                countdown=delay,
                argsrepr=f"({stage!r}, {_describe([work])})",
            )


@app.task(name="worker.tasks.enrich_session", bind=True)
def enrich_session(self: Task, session_id: str, trigger: dict[str, Any] | None = None) -> None:
    """Fetch, validate and enrich one session, then queue its delivery to every sink."""
    # A foreign producer may send anything: keep it (bounded) so it can be dead-lettered.
    work = Work(
        session_id if isinstance(session_id, str) else repr(session_id)[:256], trigger=trigger
    )
    _fetch(self, [work])


@app.task(name="worker.tasks.enrich_batch", bind=True)
def enrich_batch(self: Task, items: list[dict[str, Any]]) -> None:
    """The same as enrich_session for several sessions in one message."""
    _fetch(self, [Work.from_message(item) for item in items])


@app.task(name="worker.tasks.deliver", bind=True)
def deliver(self: Task, sink: str, items: list[dict[str, Any]]) -> None:
    """Deliver built payloads to one sink."""
    batch = [Work.from_message(item) for item in items]
    runtime = get_runtime(settings)
    result = _run(self, sink, runtime.pipeline.deliver(sink, batch))
    _dispatch(result, sink)


def _fetch(task: Task, batch: list[Work]) -> None:
    runtime = get_runtime(settings)
    result = _run(task, "fetch", runtime.pipeline.fetch(batch))
    _dispatch(result, "fetch")
