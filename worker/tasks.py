"""Celery tasks: thin wiring of the pipeline's decisions onto queues.

``worker.tasks.enrich_session`` (one session id) is the contract for producers elsewhere;
``enrich_batch`` carries several ids per message so Celery's per-message cost is shared.
Every id keeps its own retries, dead letter and delivery record either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Reject, Retry
from redis.exceptions import RedisError

from worker.app import app, settings
from worker.messages import Parsed, Refusal, read_batch_call, read_deliver_call, read_session_call
from worker.producer import BATCH_TASK_NAME, DELIVER_TASK_NAME, SESSION_TASK_NAME, Producer
from worker.retry import RetryPolicy
from worker.work import Work

if TYPE_CHECKING:
    from worker.pipeline import Pipeline, StageResult

log = logging.getLogger("worker.tasks")
producer = Producer(app)

# A stage that fails as a whole (Redis away, a bug) is not any session's fault: its message is
# tried again with backoff (at most 30 s apart) for about an hour; past that, every session it
# carries is dead-lettered as internal_error, never dropped and never retried forever.
_WHOLE_MESSAGE_RETRY = RetryPolicy(base_s=1.0, max_s=30.0)
WHOLE_MESSAGE_RETRY_FOR_S = 3600
_WHOLE_MESSAGE_MAX_RETRIES = int(WHOLE_MESSAGE_RETRY_FOR_S / (_WHOLE_MESSAGE_RETRY.max_s / 2))

Stage = Callable[["Pipeline"], Coroutine[Any, Any, "StageResult"]]


def _process(task: Task, stage: str, run_stage: Stage, parsed: Parsed) -> None:
    """Run a stage and queue what it decided; on a failure of the whole, retry the message."""
    # Imported here, in the pool process, not in the prefork parent: the parent never runs a
    # stage, and every module it loads is counted again in each child's resident memory.
    from worker.runtime import get_runtime

    try:
        runtime = get_runtime(settings)
        if parsed.refused:
            refused = _named(parsed.refused, task.request.id)
            runtime.run(runtime.pipeline.refuse(refused, stage_name(stage)))
        if parsed.works:
            result = runtime.run(run_stage(runtime.pipeline))
            if stage != "fetch":  # a fetch hands its waves over as they complete
                _dispatch(result, stage)
    except Exception as exc:
        if task.request.retries >= _WHOLE_MESSAGE_MAX_RETRIES:
            _give_up(stage, parsed, exc)
            return
        countdown = _WHOLE_MESSAGE_RETRY.delay_s(task.request.retries + 1)
        log.warning(
            "stage failed as a whole; message retried",
            exc_info=not isinstance(exc, RedisError),
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


def _give_up(stage: str, parsed: Parsed, exc: Exception) -> None:
    """Dead-letter every session of a message that failed as a whole for too long."""
    from worker.runtime import get_runtime

    error = f"the message failed as a whole for {WHOLE_MESSAGE_RETRY_FOR_S} s: {type(exc).__name__}"
    refused = [
        Refusal(w.session_id, "internal_error", error, w.trigger, w.event) for w in parsed.works
    ]
    log.error("message given up; its sessions dead-lettered", extra={"stage": stage})
    runtime = get_runtime(settings)
    try:
        runtime.run(runtime.pipeline.refuse(refused, stage_name(stage)))
    except Exception as again:
        raise Reject(type(again).__name__, requeue=True) from again


def stage_name(stage: str) -> str:
    """The dead-letter stage of a task: fetch, or deliver:<sink>."""
    return stage if stage in ("fetch", "message") else f"deliver:{stage}"


def _named(refused: list[Refusal], task_id: str | None) -> list[Refusal]:
    """Refusals that name no session get the message's id, so each keeps its own record."""
    named = []
    for n, refusal in enumerate(refused):
        if refusal.session_id == "(message)":
            refusal = replace(refusal, session_id=f"(message {task_id} #{n})")
        named.append(refusal)
    return named


def _dispatch(result: StageResult, stage: str) -> None:
    """Queue deliveries per sink, and (without a ledger) each retry after its own delay."""
    with producer.session():
        for sink, works in result.deliveries.items():
            producer.send_deliveries(sink, works)
        if result.retries_scheduled:
            return  # they wait in the ledger's due index, published when due
        for work, delay in result.retries:
            if stage == "fetch":
                producer.send_fetches([work], countdown=delay)
            else:
                producer.send_deliveries(stage, [work], countdown=delay)
        for sink, retries in result.delivery_retries.items():  # a fetch's inline deliveries
            for work, delay in retries:
                producer.send_deliveries(sink, [work], countdown=delay)


@app.task(name=SESSION_TASK_NAME, bind=True)
def enrich_session(self: Task, *args: Any, **kwargs: Any) -> None:
    """Fetch, validate and enrich one session, then queue its delivery to every sink.

    Takes ``(session_id, trigger=None)``; anything else a foreign producer sends is read
    without raising: a bad id or trigger is dead-lettered, unknown keywords are ignored.
    """
    parsed = read_session_call(args, kwargs)
    _process(self, "fetch", _fetch(parsed.works), parsed)


def _fetch(works: list[Work]) -> Stage:
    """The fetch stage, publishing each wave's deliveries as soon as it is recorded."""
    return lambda pipeline: pipeline.fetch(works, on_ready=lambda wave: _dispatch(wave, "fetch"))


@app.task(name=BATCH_TASK_NAME, bind=True)
def enrich_batch(self: Task, *args: Any, **kwargs: Any) -> None:
    """The same as enrich_session for several sessions in one message."""
    parsed = read_batch_call(args, kwargs)
    _process(self, "fetch", _fetch(parsed.works), parsed)


@app.task(name=DELIVER_TASK_NAME, bind=True)
def deliver(self: Task, *args: Any, **kwargs: Any) -> None:
    """Deliver built payloads to one sink."""
    sink, parsed = read_deliver_call(args, kwargs)
    if sink is None:
        _process(self, "message", _nothing, parsed)
        return
    _process(self, sink, lambda pipeline: pipeline.deliver(sink, parsed.works), parsed)


async def _nothing(pipeline: Pipeline) -> StageResult:
    from worker.pipeline import StageResult

    return StageResult()
