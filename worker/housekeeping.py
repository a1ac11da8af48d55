"""What every worker's main process does on Celery's timer: due retries, then reconciling.

A consumer bootstep, so it starts and stops with the worker's consumer (and so with its broker
connection), in the main process, never in a pool child. Each tick does a few Redis calls
(milliseconds) on the consumer's event loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import bootsteps
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from config import Settings
from worker.metrics import MetricsBatch
from worker.producer import Producer
from worker.redis_clients import sync_client
from worker.schedule import DueRetries, Reconciler

log = logging.getLogger("worker.housekeeping")

# What a tick may meet while Redis or the broker is away: logged, tried again next tick.
_AWAY = (RedisError, OperationalError, OSError)


def due_poll_s(settings: Settings) -> float:
    """How often due retries are looked for: at most 1 s late, sooner for short backoffs."""
    if settings.retry.exponential:
        return max(0.05, min(1.0, settings.retry.backoff_base_s / 2))
    return max(0.05, min(1.0, settings.retry.schedule[0] / 2))


def reconcile_every_s(settings: Settings) -> float:
    """How often a worker offers to reconcile: a quarter of RECONCILE_AFTER_S, 1 s to 60 s."""
    return max(1.0, min(60.0, settings.reconcile_after_s / 4))


class Housekeeping:
    """Due retries and the reconciler for one worker."""

    def __init__(self, settings: Settings, producer: Producer) -> None:
        self._settings = settings
        self._producer = producer
        self._redis = sync_client(settings.redis_url)
        self._due = DueRetries(self._redis, batch_size=settings.worker_batch_size)
        self._reconciler = Reconciler(
            self._redis,
            after_s=settings.reconcile_after_s,
            batch_size=settings.worker_batch_size,
            lock_ttl_s=2 * reconcile_every_s(settings),
            ledger_ttl_s=settings.ledger_ttl,
        )
        self._warned_at = 0.0

    def publish_due(self) -> int:
        """Publish what is due; Redis or the broker away is logged, not raised."""
        try:
            with self._producer.session():
                return self._due.publish_due(
                    self._producer.send_fetches, self._producer.send_deliveries
                )
        except _AWAY as exc:
            self._warn("due retries", exc)
            return 0

    def reconcile(self) -> list[str]:
        """One reconciler pass (if no other worker is in one)."""
        try:
            with self._producer.session():
                lost = self._reconciler.run_once(self._producer.send_fetches)
            if lost:
                batch = MetricsBatch()
                batch.inc("sessions_reconciled", len(lost))
                batch.flush_sync(self._redis)
            return lost
        except _AWAY as exc:
            self._warn("reconciler", exc)
            return []

    def close(self) -> None:
        """Close its Redis connection."""
        self._redis.close()

    def _warn(self, what: str, exc: BaseException) -> None:
        # Once a minute at most: Redis being away is said loudly elsewhere.
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            log.warning("%s: %s; trying again", what, type(exc).__name__)


class HousekeepingStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs Housekeeping on the consumer's timer while the consumer runs."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.housekeeping: Housekeeping | None = None
        self.timers: list[Any] = []

    def start(self, parent: Any) -> None:
        from worker.app import settings

        if not settings.ledger_enabled:
            return
        self.housekeeping = Housekeeping(settings, Producer(parent.app))
        timer = parent.timer
        self.timers = [
            timer.call_repeatedly(due_poll_s(settings), self.housekeeping.publish_due),
            timer.call_repeatedly(reconcile_every_s(settings), self.housekeeping.reconcile),
        ]

    def stop(self, parent: Any) -> None:
        for entry in self.timers:
            entry.cancel()
        self.timers = []
        if self.housekeeping is not None:
            self.housekeeping.close()
            self.housekeeping = None
