"""Network faults between the fleet and Redis, through workshop.faultproxy (loopback only)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.processes import run_cli, start_worker
from workshop.faultproxy import FaultProxy
from workshop.receiver import WebhookReceiver

pytestmark = pytest.mark.integration


def test_a_worker_keeps_consuming_after_its_connections_are_cut(
    worker_env: dict[str, str], redis_url: str, receiver: WebhookReceiver
) -> None:
    """Every connection of an idle worker closed at once, Redis still up, three times over."""
    parts = urlsplit(redis_url)
    with FaultProxy(parts.port or 6379) as proxy:
        env = {**worker_env, "REDIS_URL": proxy.url(int(parts.path.lstrip("/") or 0))}
        worker = start_worker(env)
        try:
            for round_ in range(3):
                assert proxy.sever_all() >= 2, worker.output  # at least BRPOP and PUB/SUB
                ids = [f"ses_sever{round_}x{n}" for n in range(3)]
                enqueued = run_cli(["enqueue", *ids], worker_env)  # straight to Redis
                assert enqueued.returncode == 0, enqueued.stderr
                assert receiver.wait_for(3 * (round_ + 1), timeout=45, distinct=True), worker.output
        finally:
            worker.stop()
