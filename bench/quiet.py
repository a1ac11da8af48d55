"""Log set-up for the reference workers: INFO, for the " ready." line, but no line per task."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

# Celery's "Task … received" and "Task … succeeded in" lines.
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def quiet_per_task_lines(*others: str) -> None:
    """Raise the per-task loggers (and ``others``) to WARNING once Celery has set up logging."""

    def quiet(**_: Any) -> None:
        for name in (*PER_TASK_LOGGERS, *others):
            logging.getLogger(name).setLevel(logging.WARNING)

    # weak=False: Celery holds receivers weakly, and nothing else keeps this closure alive.
    signals.after_setup_logger.connect(quiet, weak=False)
