"""The Celery app: ``celery -A worker.app worker`` (the Procfile's ``worker:`` line)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, signals

from config import ConfigError, Settings, load_settings
from worker import kombu_ack_guard, kombu_restore_guard
from worker.celeryconfig import celery_config, check_worker_limits
from worker.housekeeping import HousekeepingStep

log = logging.getLogger("worker.app")


def _load() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"funnelfox-enricher: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _load()
kombu_restore_guard.install()
kombu_ack_guard.install()
app = Celery("funnelfox-enricher", include=["worker.tasks"])
app.conf.update(celery_config(settings))
# Due retries and the reconciler, on the consumer's timer in every worker's main process.
app.steps["consumer"].add(HousekeepingStep)


@signals.celeryd_init.connect
def _check_before_start(**_: Any) -> None:
    # SystemExit passes through Celery's signal dispatch, so a bad config stops the worker.
    from worker.redis_clients import require_reachable

    try:
        check_worker_limits(settings)
        require_reachable(settings.redis_url)
    except ConfigError as exc:
        print(f"funnelfox-enricher: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@signals.worker_ready.connect
def _register_destinations(**_: Any) -> None:
    # So the console (backfill, dlq replay) and /metrics know the fleet's destinations
    # without this worker's settings.
    from worker.fleet import register_destinations
    from worker.redis_clients import sync_client

    client = sync_client(settings.redis_url)
    try:
        register_destinations(client, settings.destinations)
    finally:
        client.close()


@signals.worker_process_init.connect
def _own_sigterm(**_: Any) -> None:
    # A supervisor's SIGTERM to every process must not cut off a pool process's task; see
    # worker/pool_sigterm.py.
    from worker import pool_sigterm

    pool_sigterm.install()


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting here replaces Celery's own logging set-up with ours, in every process.
    from worker.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)


@signals.worker_process_shutdown.connect
def _close_clients(**_: Any) -> None:
    from worker.runtime import close_runtime

    close_runtime()
