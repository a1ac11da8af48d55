"""The failure-semantics issue's finish line, in one run: every fault class, a worker SIGKILL
and a Redis restart; every id ends delivered under one webhook-id or dead-lettered with the
right reason, and no secret shows in any log or dead letter."""

from __future__ import annotations

import time
from collections import defaultdict

import orjson
import pytest
import redis

from tests.conftest import FOX_SECRET
from tests.processes import (
    broker_state,
    dead_letters,
    resume_consuming,
    run_cli,
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
MAX_ATTEMPTS = 5

DELIVERED = (
    [f"ses_cplain{i:02d}" for i in range(40)]
    + [f"ses_c{code}-s{code}x2" for code in (408, 425, 429, 500, 502, 503, 504, 524)]
    + ["ses_cdrop-dropx1", "ses_cslow-slow3000x1", "ses_cra-s429x1-ra1", "ses_cauth-s401x2"]
    + [
        "ses_ch500-h500x2",
        "ses_chdrop-hdropx1",
        "ses_ch429-h429x1-hra1",
        "ses_canon-anon",
        "ses_cextra-extra",
    ]
)
DEAD = {
    "ses_c400-s400": ("fetch", "rejected"),
    "ses_c404-s404": ("fetch", "not_found"),
    "ses_c422-s422": ("fetch", "rejected"),
    "ses_cnotjson-notjson": ("validate", "invalid_payload"),
    "ses_cinvalid-invalid": ("validate", "invalid_payload"),
    "ses_cexhaust-s503": ("fetch", "retries_exhausted"),
    "ses_clocked-s403": ("fetch", "unauthorized"),
    "ses_ch410-h410": ("deliver:webhook", "gone"),
    "ses_ch404-h404": ("deliver:webhook", "rejected"),
    "ses_ch302-h302": ("deliver:webhook", "rejected"),
    "ses_chexhaust-h503": ("deliver:webhook", "retries_exhausted"),
}


def test_fault_injection_run(
    worker_env: dict[str, str],
    aof_redis: EmbeddedRedis,
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
) -> None:
    env = {
        **worker_env,
        "REDIS_URL": aof_redis.url,
        "VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        "TASK_TIME_LIMIT_S": "3",
        "FUNNELFOX_TIMEOUT_S": "1",
        "WEBHOOK_TIMEOUT_S": "1",
        "RETRY_BACKOFF_BASE_S": "0.05",
        "RETRY_BACKOFF_MAX_S": "1.5",
        "RETRY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "WORKER_BATCH_SIZE": "8",
    }
    ids = DELIVERED + list(DEAD)
    enqueued = run_cli(["enqueue", "-"], env, stdin="\n".join(ids) + "\n")
    assert enqueued.returncode == 0, enqueued.stderr
    client = redis.Redis.from_url(aof_redis.url)
    logs: list[str] = []

    simulator.set_latency(400)
    first = start_worker(env)
    assert wait_until(lambda: receiver.accepted_count(distinct=True) >= 3, 30), first.output
    stop_consuming(first, env)  # see stop_consuming: outside kombu's pop-then-record window
    first.kill()  # mid-flight: batches in progress, retries waiting in its memory
    killed_at = time.strftime("%H:%M:%S")
    logs.append(first.output)

    second = start_worker(env)
    try:
        assert wait_until(lambda: receiver.accepted_count(distinct=True) >= 15, 60), second.output
        stop_consuming(second, env)  # retries and deliveries stay in progress in the worker
        aof_redis.restart(kill=True)
        restarted_at = time.strftime("%H:%M:%S")
        resume_consuming(second, env)
        simulator.set_latency(0)
        assert wait_until(lambda: settled(receiver, client, DELIVERED, DEAD), 120), (
            broker_state(client, receiver, DELIVERED)
            + f"\nkilled at {killed_at}, restarted at {restarted_at}\nFIRST\n{logs[0]}"
            + "\nSECOND\n"
            + second.output
        )
    finally:
        second.stop()
        logs.append(second.output)

    webhook_ids: dict[str, set[str]] = defaultdict(set)
    for delivery in receiver.deliveries():
        assert delivery.verified
        webhook_ids[delivery.session_id].add(delivery.webhook_id)
    # Delivered once by webhook-id: redeliveries after the crashes repeat the same id.
    assert sorted(webhook_ids) == sorted(DELIVERED)
    assert all(len(ids_) == 1 for ids_ in webhook_ids.values())

    letters = dead_letters(client)
    for session_id, (stage, reason) in DEAD.items():
        assert letters[f"{stage}|{session_id}"]["reason"] == reason, session_id
    assert {key.split("|", 1)[1] for key in letters} == set(DEAD)

    listed = run_cli(["dlq", "list"], env).stdout
    secrets = (FOX_SECRET, DEMO_WEBHOOK_SECRET, DEMO_WEBHOOK_SECRET.removeprefix("whsec_"))
    for text in (*logs, listed, *(orjson.dumps(v).decode() for v in letters.values())):
        for secret in secrets:
            assert secret not in text
    client.close()
