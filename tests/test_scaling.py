"""Several worker processes on one Redis: each session fetched and delivered once, and one
FunnelFox rate limit for all of them together."""

from __future__ import annotations

import bisect

import pytest
import redis

from tests.processes import run_cli, start_worker
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import WebhookReceiver

pytestmark = pytest.mark.integration

RATE = 25
WORKERS = 3


def busiest_second(times: list[float]) -> int:
    """The most requests inside any one-second window."""
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered))


def test_a_fleet_shares_one_rate_limit_and_delivers_each_session_once(
    worker_env: dict[str, str],
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    env = {**worker_env, "FUNNELFOX_RATE_LIMIT_PER_S": str(RATE), "WORKER_BATCH_SIZE": "10"}
    ids = [f"ses_fleet{i:03d}" for i in range(150)]
    enqueued = run_cli(["enqueue", "-"], env, stdin="\n".join(ids) + "\n")
    assert enqueued.returncode == 0, enqueued.stderr
    workers = [start_worker(env) for _ in range(WORKERS)]
    try:
        assert receiver.wait_for(len(ids), timeout=60, distinct=True)
    finally:
        outputs = [w.output for w in workers]
        for worker in workers:
            worker.stop()

    times = [t for sid in ids for t, _ in simulator.requests_for(sid)]
    assert len(times) == len(ids), "each session fetched once across the fleet"
    assert sorted(d.session_id for d in receiver.deliveries()) == ids
    # The limit holds for the fleet (a burst of a tenth of a second on top), not per worker.
    assert busiest_second(times) <= RATE + RATE // 10 + 1
    assert max(times) - min(times) >= (len(ids) - RATE) / RATE
    # Every worker took part: the limit slowed the fleet, it did not serialise it on one.
    assert all("succeeded" in output for output in outputs)
