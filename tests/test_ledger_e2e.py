"""The ledger with real worker processes: status, lost messages reconciled, a long outage.

Real Redis, real workers from the Procfile line, the FunnelFox simulator and a Standard
Webhooks receiver; every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import redis
from processes import dead_letters, run_cli, settled, start_worker, wait_until

from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import WebhookReceiver

pytestmark = pytest.mark.integration


def enqueue(env: dict[str, str], ids: list[str]) -> None:
    result = run_cli(["enqueue", "-"], env, stdin="\n".join(ids) + "\n")
    assert result.returncode == 0, result.stderr


def status(env: dict[str, str], *ids: str) -> tuple[int, list[dict[str, object]], str]:
    result = run_cli(["status", *ids], env)
    return (
        result.returncode,
        [json.loads(line) for line in result.stdout.splitlines()],
        result.stderr,
    )


def test_status_tells_where_each_session_is_and_what_happened(
    worker_env: dict[str, str], receiver: WebhookReceiver, redis_client: redis.Redis
) -> None:
    story, gone = "ses_story-s500x2", "ses_gone-s404"
    enqueue(worker_env, [story, gone])
    code, [queued, _], _ = status(worker_env, story, gone)
    assert code == 0
    assert queued["state"] == "queued"
    assert queued["source"] == "cli"

    worker = start_worker(worker_env)
    try:
        assert wait_until(lambda: settled(receiver, redis_client, [story], [gone]), 30), (
            worker.output
        )
        assert wait_until(lambda: status(worker_env, story)[1][0]["state"] == "delivered", 10)
    finally:
        worker.stop()

    code, [told, dead], _ = status(worker_env, story, gone)
    assert code == 0
    assert told["destinations"] == {"stream": "delivered", "webhook": "delivered"}
    stages = [(a["stage"], a["outcome"]) for a in told["attempts"]]  # type: ignore[union-attr]
    assert stages[:4] == [
        ("accepted", "ok"),
        ("fetch", "retry"),
        ("fetch", "retry"),
        ("fetch", "ok"),
    ]
    assert {("deliver:webhook", "ok"), ("deliver:stream", "ok")} <= set(stages)
    assert told["attempts"][1]["detail"] == "500"  # type: ignore[index]
    assert dead["state"] == "dead"
    assert ("fetch", "dead:not_found") in [(a["stage"], a["outcome"]) for a in dead["attempts"]]  # type: ignore[union-attr]

    unknown_code, found, err = status(worker_env, story, "ses_never_seen")
    assert unknown_code == 1
    assert len(found) == 1
    assert "ses_never_seen: unknown" in err
    _, [summary], _ = status(worker_env)
    assert summary["unfinished"] == {"queued": 0, "in_progress": 0, "retrying": 0}
    assert summary["finished_total"] == {"delivered": 1, "dead": 1}


def test_messages_deleted_from_the_broker_are_reconciled_and_delivered_once(
    worker_env: dict[str, str], receiver: WebhookReceiver, redis_client: redis.Redis
) -> None:
    """The unseen-loss case: the messages are gone, the ledger still knows the sessions."""
    ids = [f"ses_lost{n:03d}" for n in range(120)]
    enqueue(worker_env, ids)
    assert redis_client.llen("enrich") == 12
    redis_client.delete("enrich")  # every queued message gone, as a crash or a cut could do

    worker = start_worker({**worker_env, "RECONCILE_AFTER_S": "4", "TASK_TIME_LIMIT_S": "3"})
    try:
        assert receiver.wait_for(len(ids), timeout=60, distinct=True), worker.output
        assert wait_until(lambda: redis_client.xlen("test:enriched") == len(ids), 20)
    finally:
        worker.stop()
    per_session = Counter(d.session_id for d in receiver.deliveries())
    assert sorted(per_session) == ids
    assert set(per_session.values()) == {1}
    reconciled = float(redis_client.hget("ffe:metrics", "sessions_reconciled|") or 0)
    assert reconciled >= len(ids)  # one more publish of a session is harmless, as shown above
    assert "reconciled: published again" in worker.output


def test_a_destination_down_longer_than_the_visibility_timeout(
    worker_env: dict[str, str],
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    """Retries wait in the ledger, so delays above the visibility timeout redeliver nothing."""
    env = {k: v for k, v in worker_env.items() if not k.startswith("RETRY_")}
    env.update(
        VISIBILITY_TIMEOUT_S="4",
        TASK_TIME_LIMIT_S="3",
        WEBHOOK_TIMEOUT_S="1",
        RETRY_SCHEDULE_S="1,6,6",  # the second and third delays exceed the visibility timeout
        RECONCILE_AFTER_S="30",
        BREAKER_FAILURES="1000",  # retries are the point here, not the breaker's pause
    )
    ids = [f"ses_outage{n:02d}" for n in range(30)]
    receiver.set_outage(503)
    enqueue(env, ids)
    worker = start_worker(env)
    try:
        # Down long enough that every session has been tried twice and waits 6 s (> 4 s).
        assert wait_until(
            lambda: sum(1 for a in receiver.attempts() if a.status == 503) >= 2 * len(ids), 30
        ), worker.output
        receiver.set_outage(None)
        assert receiver.wait_for(len(ids), timeout=40, distinct=True), worker.output
        assert wait_until(lambda: len(receiver.deliveries()) >= len(ids), 5)
    finally:
        worker.stop()
    accepted = Counter(d.session_id for d in receiver.deliveries())
    assert sorted(accepted) == ids
    assert set(accepted.values()) == {1}  # delivered once each: nothing redelivered early
    assert dead_letters(redis_client) == {}
    assert redis_client.xlen("test:enriched") == len(ids)  # the stream never waited for it


def test_a_slow_session_does_not_hold_up_its_batch_mates(
    worker_env: dict[str, str], receiver: WebhookReceiver, redis_client: redis.Redis
) -> None:
    """Head of line: a batch's sessions are handed over as their fetches complete."""
    slow = "ses_hol-slow4000x1"  # FunnelFox answers it after 4 s, once
    mates = [f"ses_hol{n}" for n in range(9)]
    enqueue(worker_env, [slow, *mates])  # one message: WORKER_BATCH_SIZE is 10
    assert redis_client.llen("enrich") == 1
    worker = start_worker(worker_env)
    try:
        assert receiver.wait_for(len(mates), timeout=30, distinct=True), worker.output
        # Every batch-mate is delivered while the slow one is still being fetched.
        assert {d.session_id for d in receiver.deliveries()} == set(mates)
        assert receiver.wait_for(len(mates) + 1, timeout=30, distinct=True), worker.output
    finally:
        worker.stop()
    assert {d.session_id for d in receiver.deliveries()} == {slow, *mates}
