"""Flower's Celery app: built from REDIS_URL alone, never a worker's settings."""

from __future__ import annotations

import importlib
import os

import pytest

from worker.producer import TASK_NAMES

CLOSED = "redis://127.0.0.1:1/0"
# Once worker.tasks is imported, its (shared) tasks join every app finalized later, Flower's
# in this test process included, and Celery warns that the stand-ins were not registered
# there. Flower's own process never imports worker.tasks.
pytestmark = pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")


@pytest.fixture(autouse=True)
def no_worker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("WEBHOOK_", "OUTPUT_", "FUNNELFOX_", "DESTINATIONS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_URL", CLOSED)


def test_the_app_knows_the_broker_the_fetch_queue_and_the_task_names() -> None:
    from worker.flower_app import build

    app = build("sentinel://:pw@s1,s2/3?master=ffe")

    assert app.conf.broker_url == "sentinel://:pw@s1:26379/3;sentinel://:pw@s2:26379/3"
    assert app.conf.broker_transport_options["master_name"] == "ffe"
    # Redis cannot say which destinations workers registered: the fetch queue alone.
    assert [q.name for q in app.conf.task_queues] == ["enrich"]
    assert set(TASK_NAMES) <= set(app.tasks)


def test_its_stand_in_tasks_never_replace_a_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.flower_app

    assert set(TASK_NAMES) <= set(worker.flower_app.app.tasks)
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")  # what worker.app needs to load
    tasks = importlib.import_module("worker.tasks")

    for name in TASK_NAMES:
        assert tasks.app.tasks[name].run.__module__ == "worker.tasks", name
