"""At-least-once under crashes: a killed worker, a stopped worker, a restarted Redis.

A short visibility timeout (4 s) stands in for the production hour, so a dead worker's
sessions come back within seconds; everything else is as in production.
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict

import pytest
import redis

from tests.conftest import FOX_SECRET
from tests.processes import (
    dead_letters,
    resume_consuming,
    run_cli,
    run_python,
    settled,
    start_worker,
    stop_consuming,
    wait_until,
)
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import DEMO_WEBHOOK_SECRET, WebhookReceiver
from workshop.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration

VISIBILITY_S = 4


@pytest.fixture
def crash_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {
        **worker_env,
        "VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        "TASK_TIME_LIMIT_S": "3",
        "FUNNELFOX_TIMEOUT_S": "2.5",
        "WEBHOOK_TIMEOUT_S": "1",
        "RETRY_BACKOFF_BASE_S": "0.05",
        "RETRY_BACKOFF_MAX_S": "0.5",
        "RETRY_MAX_ATTEMPTS": "5",
    }


def enqueue(env: dict[str, str], ids: list[str]) -> None:
    result = run_cli(["enqueue", "-"], env, stdin="\n".join(ids) + "\n")
    assert result.returncode == 0, result.stderr


def one_webhook_id_each(receiver: WebhookReceiver) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = defaultdict(set)
    for delivery in receiver.deliveries():
        ids[delivery.session_id].add(delivery.webhook_id)
    return ids


def test_sigkilled_workers_sessions_are_delivered_by_another(
    crash_env: dict[str, str],
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    ids = [f"ses_kill{i:02d}" for i in range(30)]
    enqueue(crash_env, ids)
    simulator.set_latency(2000)  # every fetch is in flight for 2 s: time to kill mid-way
    doomed = start_worker(crash_env)
    assert wait_until(lambda: simulator.total_requests > 0 or _in_flight(redis_client), 20)
    assert wait_until(lambda: _in_flight(redis_client) >= 2, 20), doomed.output
    doomed.kill()  # SIGKILL to the whole process group: no warm shutdown, no acks
    killed_at = time.monotonic()
    # As if a worker of this fleet had died in the middle of a restore sweep, holding kombu's
    # sweep lock for as long as the worker's settings make it live (kombu's default: 300 s).
    lock_s = sweep_lock_expiry_s(crash_env)
    redis_client.set("unacked_mutex", "a-dead-worker", px=int(lock_s * 1000))
    assert receiver.accepted_count() == 0, "the kill came before any delivery"
    simulator.set_latency(0)

    rescuer = start_worker(crash_env)
    try:
        assert receiver.wait_for(len(ids), timeout=6 * VISIBILITY_S + 30, distinct=True), (
            rescuer.output
        )
    finally:
        rescuer.stop()
    # Back in work within about twice the visibility timeout (start-up of the rescuer aside).
    refetched = [t for sid in ids for t, _ in simulator.requests_for(sid) if t > killed_at]
    assert min(refetched) - killed_at <= 2 * VISIBILITY_S + 5
    per_session = one_webhook_id_each(receiver)
    assert sorted(per_session) == ids
    assert all(len(webhook_ids) == 1 for webhook_ids in per_session.values())


def sweep_lock_expiry_s(env: dict[str, str]) -> float:
    """How long the worker these variables configure holds kombu's restore-sweep lock."""
    code = (
        "from worker.app import app\n"
        "print(app.conf.broker_transport_options.get('unacked_mutex_expire', 300))"
    )
    out = run_python(code, env)
    return float(out.strip())


def _in_flight(client: redis.Redis) -> int:
    """Messages a worker holds without having acknowledged them (kombu's unacked hash)."""
    return int(client.hlen("unacked"))


def test_sigterm_finishes_in_flight_work_and_returns_the_rest(
    crash_env: dict[str, str],
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    ids = [f"ses_term{i:02d}" for i in range(40)]
    enqueue(crash_env, ids)
    simulator.set_latency(1000)
    stopping = start_worker(crash_env)
    assert wait_until(lambda: _in_flight(redis_client) >= 2, 20), stopping.output
    stopping.signal(signal.SIGTERM)
    assert stopping.stop(timeout_s=30) == 0, stopping.output
    assert "Warm shutdown" in stopping.output
    simulator.set_latency(0)

    successor = start_worker(crash_env)
    try:
        assert receiver.wait_for(len(ids), timeout=30, distinct=True), successor.output
        assert wait_until(lambda: redis_client.xlen("test:enriched") == len(ids), 30)
    finally:
        successor.stop()
    per_session = one_webhook_id_each(receiver)
    assert sorted(per_session) == ids
    # Nothing had to wait for the visibility timeout: a warm shutdown leaves nothing unacked.
    assert _in_flight(redis_client) == 0, (redis_client.hgetall("unacked"), successor.output)


def test_redis_restart_loses_nothing(
    crash_env: dict[str, str],
    aof_redis: EmbeddedRedis,
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
) -> None:
    env = {
        **crash_env,
        "REDIS_URL": aof_redis.url,
        "RETRY_BACKOFF_MAX_S": "1",
        "RETRY_MAX_ATTEMPTS": "8",
    }
    plain = [f"ses_aof{i:02d}" for i in range(30)]
    retrying = [f"ses_aofr{i}-s503x3" for i in range(5)] + [f"ses_aofh{i}-h500x3" for i in range(5)]
    dead = ["ses_aofd-s404"]
    enqueue(env, plain + retrying + dead)
    simulator.set_latency(300)
    worker = start_worker(env)
    client = redis.Redis.from_url(aof_redis.url)
    try:
        assert wait_until(lambda: receiver.accepted_count(distinct=True) >= 5, 30), worker.output
        stop_consuming(worker, env)  # see stop_consuming; retries stay in progress
        aof_redis.restart(kill=True)  # SIGKILL: only what the AOF holds survives
        resume_consuming(worker, env)
        simulator.set_latency(0)
        delivered = plain + retrying
        assert wait_until(
            lambda: settled(receiver, client, delivered, dead), 6 * VISIBILITY_S + 60
        ), worker.output
    finally:
        worker.stop()
        client_output = worker.output
    per_session = one_webhook_id_each(receiver)
    assert sorted(per_session) == sorted(plain + retrying)
    assert all(len(webhook_ids) == 1 for webhook_ids in per_session.values())
    letters = dead_letters(client)
    assert letters["fetch|ses_aofd-s404"]["reason"] == "not_found"
    client.close()
    assert FOX_SECRET not in client_output
    assert DEMO_WEBHOOK_SECRET not in client_output
