"""The chaos run, once (``make chaos`` repeats it): workers SIGKILLed and Redis SIGKILLed and
restarted on its AOF while the workers consume, never paused, with every fault class in the
mix. Every accepted id ends delivered to each destination under one webhook-id, or
dead-lettered with its reason; the ledger holds nothing unfinished; no secret shows in any
log or dead letter."""

from __future__ import annotations

import random

import orjson
import pytest
import redis

from tests.chaos import CHAOS, Services, keep_logs, leaked_secrets, run_chaos
from tests.processes import dead_letters, run_cli
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import WebhookReceiver
from workshop.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration


def test_workers_and_redis_killed_while_consuming(
    aof_redis: EmbeddedRedis,
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    services = Services(aof_redis, simulator, receiver)
    found = run_chaos(1, services, random.Random())
    with capsys.disabled():
        print("\n" + found.line())
    assert found.ok, f"{found.report()}\nlogs: {keep_logs(found)}"
    assert found.accepted == len(CHAOS.ids)
    assert found.kills == {"worker": 5, "redis": 5}

    client = redis.Redis.from_url(aof_redis.url)
    letters = [orjson.dumps(letter).decode() for letter in dead_letters(client).values()]
    client.close()
    listed = run_cli(["dlq", "list"], services.env(aof_redis.url)).stdout
    assert len(listed.splitlines()) == len(CHAOS.dead)
    assert leaked_secrets([*found.logs, listed, *letters], simulator.secret) == []
