"""Celery's per-message ceiling: a task that does nothing, on a broker set up like the worker's.

``celery -A bench.noop worker``: same Redis, its own queue, late acknowledgements, prefetch 1,
no result backend, task events on (the worker sends them for Flower), no log line per task.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu.entity import Queue

from bench.quiet import quiet_per_task_lines

QUEUE = "bench.noop"
TASK = "bench.noop.noop"

app = Celery("bench-noop", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13"))
app.conf.update(
    task_default_queue=QUEUE,
    task_queues=[Queue(QUEUE)],
    result_backend=None,
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
)
# Two log lines per message would be a good part of a no-op's cost.
quiet_per_task_lines()


@app.task(name=TASK)
def noop() -> None:
    """Nothing: what a run costs is Celery's own work per message."""
