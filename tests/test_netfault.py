"""Network faults between the fleet and Redis, through workshop.faultproxy (loopback only)."""

from __future__ import annotations

import random
from urllib.parse import urlsplit

import pytest

from tests.chaos import Services, run_netfault
from tests.processes import run_cli, start_worker
from workshop.faultproxy import FaultProxy
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import WebhookReceiver
from workshop.redis_server import EmbeddedRedis

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


def test_a_worker_whose_acknowledgements_fail_keeps_consuming(
    worker_env: dict[str, str], redis_url: str, receiver: WebhookReceiver
) -> None:
    """Every ack cut on its way to Redis: the worker goes on taking messages (each comes back
    after the visibility timeout, and is not delivered again)."""
    parts = urlsplit(redis_url)
    with FaultProxy(parts.port or 6379) as proxy:
        env = {
            **worker_env,
            "REDIS_URL": proxy.url(int(parts.path.lstrip("/") or 0)),
            # Nothing is swept back or rejected while acks fail: a restore is a WATCH/MULTI
            # transaction with a ZREM too, and redis-py retries a transaction whose
            # connection dies forever, so a restore would spin until the cuts stop.
            "VISIBILITY_TIMEOUT_S": "90",
            "TASK_TIME_LIMIT_S": "60",
            "RECONCILE_AFTER_S": "120",
        }
        worker = start_worker(env)
        try:
            proxy.cut_requests_containing = b"ZREM"  # kombu's ack: MULTI ZREM HDEL EXEC
            ids = [f"ses_noack{n}" for n in range(6)]
            enqueued = run_cli(
                ["enqueue", "-"], {**worker_env, "WORKER_BATCH_SIZE": "1"}, stdin="\n".join(ids)
            )
            assert enqueued.returncode == 0, enqueued.stderr
            # Two pool processes, so two prefetch slots: unguarded, two failed acks stopped it.
            assert receiver.wait_for(len(ids), timeout=60, distinct=True), worker.output
            assert proxy.cuts.request >= 2
            assert "Couldn't ack" in worker.output
        finally:
            proxy.cut_requests_containing = None
            worker.stop()
    assert sorted({d.session_id for d in receiver.deliveries()}) == ids


def test_network_faults_between_the_fleet_and_redis(
    simulator: FunnelFoxSimulator, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    """Workers and the web ingress through a proxy that cuts a few hundred connections: every
    accepted event ends delivered to each destination or dead-lettered with its reason."""
    with EmbeddedRedis() as server:
        found = run_netfault(
            1, Services(server, simulator, receiver), random.Random(), min_cuts=200
        )
    with capsys.disabled():
        print("\n" + found.line())
    assert found.ok, found.report()
    assert found.cuts is not None
    assert found.cuts.total >= 200
    assert found.cuts.request > 0
    assert found.cuts.reply > 0
