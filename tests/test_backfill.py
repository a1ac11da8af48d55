"""``python -m worker backfill`` against the FunnelFox simulator and a real Redis."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import pytest
import redis
from processes import ROOT, Process, run_cli, start_worker, wait_until

from worker.keys import FETCH_QUEUE, SINKS, delivered_key
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import WebhookReceiver
from workshop.sessions import funnel_created_at, funnel_profile_id

pytestmark = pytest.mark.integration


def queued_ids(client: redis.Redis) -> list[str]:
    """Every session id waiting in the enrich queue, in the order they were sent."""
    ids = []
    for raw in reversed(client.lrange(FETCH_QUEUE, 0, -1)):
        message = json.loads(raw)
        assert message["headers"]["task"] == "worker.tasks.enrich_batch"
        (items,), _, _ = json.loads(base64.b64decode(message["body"]))
        ids += [item["id"] for item in items]
    return ids


def saved_positions(client: redis.Redis) -> dict[str, dict[str, object]]:
    return {k.decode(): json.loads(client.get(k)) for k in client.keys("ffe:backfill:*")}


def backfill(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["backfill", *args], env)


def once_each(ids: list[str]) -> bool:
    return all(n == 1 for n in Counter(ids).values())


def test_every_session_of_a_multi_page_funnel_is_enqueued_once(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    simulator.set_funnels({"fun-a": 137, "fun-b": 20})

    result = backfill(worker_env, "--funnel-id", "fun-a")

    assert result.returncode == 0, result.stderr
    ids = queued_ids(redis_client)
    assert sorted(ids) == sorted(simulator.funnel_session_ids("fun-a"))
    assert once_each(ids)
    requests = simulator.list_requests()
    assert [r["status"] for r in requests] == [200, 200, 200]
    assert {r["limit"] for r in requests} == {"50"}
    assert {r["funnel_id"] for r in requests} == {"fun-a"}
    assert requests[0]["cursor"] is None
    # Batches of WORKER_BATCH_SIZE (10): one message per batch, not per session.
    assert redis_client.llen(FETCH_QUEUE) == 5 + 5 + 4  # 50, 50 and 37 ids
    assert "137 enqueued" in result.stderr
    assert saved_positions(redis_client) == {}  # finished: nothing to resume


def test_a_repeating_cursor_stops_without_losing_anything(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    funnel = "fun-repeatcursor"
    simulator.set_funnels({funnel: 180})
    everything = simulator.funnel_session_ids(funnel)

    first = backfill(worker_env, "--funnel-id", funnel)

    assert first.returncode == 1
    assert "next_cursor" in first.stderr
    assert "run the same command again to resume" in first.stderr
    ids = queued_ids(redis_client)
    assert ids == everything[:100]  # pages 1 and 2, each once
    [position] = saved_positions(redis_client).values()
    assert position["done"] == 50

    seen = len(simulator.list_requests())
    again = backfill(worker_env, "--funnel-id", funnel)

    assert again.returncode == 1
    assert "resuming" in again.stderr
    assert queued_ids(redis_client) == ids  # nothing enqueued twice
    assert None not in [r["cursor"] for r in simulator.list_requests()[seen:]]


def test_a_transient_page_error_is_retried(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    funnel = "fun-pageerrx2"
    simulator.set_funnels({funnel: 120})

    result = backfill(worker_env, "--funnel-id", funnel)

    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in simulator.list_requests()] == [200, 503, 503, 200, 200]
    assert result.stderr.count("503") == 2
    ids = queued_ids(redis_client)
    assert sorted(ids) == sorted(simulator.funnel_session_ids(funnel))
    assert once_each(ids)


def test_a_run_stopped_by_errors_resumes_where_it_stopped(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    funnel = "fun-pageerrx3"
    simulator.set_funnels({funnel: 130})
    env = {**worker_env, "RETRY_MAX_ATTEMPTS": "2"}

    first = backfill(env, "--funnel-id", funnel)

    assert first.returncode == 1
    assert "failed after 2 attempt(s)" in first.stderr
    assert queued_ids(redis_client) == simulator.funnel_session_ids(funnel)[:50]
    assert len(saved_positions(redis_client)) == 1

    # (The simulator keeps counting page-2 requests: its third one still fails, the fourth not.)
    seen = len(simulator.list_requests())
    second = backfill(env, "--funnel-id", funnel)

    assert second.returncode == 0, second.stderr
    assert "resuming from cursor" in second.stderr
    resumed = simulator.list_requests()[seen:]
    assert [r["status"] for r in resumed] == [503, 200, 200]
    assert None not in [r["cursor"] for r in resumed]  # page 1 not read again
    ids = queued_ids(redis_client)
    assert sorted(ids) == sorted(simulator.funnel_session_ids(funnel))
    assert once_each(ids)
    assert saved_positions(redis_client) == {}


def test_an_interrupted_run_resumes_without_enqueueing_twice(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    funnel = "fun-slow"
    simulator.set_funnels({funnel: 400})
    simulator.set_latency(150)
    process = Process(
        [sys.executable, "-m", "worker", "backfill", "--funnel-id", funnel],
        worker_env,
        name="backfill",
    )
    try:
        assert wait_until(lambda: len(queued_ids(redis_client)) >= 100, timeout_s=30)
        process.signal(signal.SIGINT)
        assert process.popen.wait(20) == 130
    finally:
        process.stop()
    assert "interrupted" in process.output
    interrupted_at = len(queued_ids(redis_client))
    assert 100 <= interrupted_at < 400
    assert interrupted_at % 50 == 0  # never half a page

    simulator.set_latency(0)
    again = backfill(worker_env, "--funnel-id", funnel)

    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr
    ids = queued_ids(redis_client)
    assert sorted(ids) == sorted(simulator.funnel_session_ids(funnel))
    assert once_each(ids)


def test_restart_ignores_the_saved_position(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    funnel = "fun-r"
    simulator.set_funnels({funnel: 80})
    assert backfill(worker_env, "--funnel-id", funnel, "--limit", "30").returncode == 0
    redis_client.delete(FETCH_QUEUE)

    result = backfill(worker_env, "--funnel-id", funnel, "--restart")

    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stderr
    assert sorted(queued_ids(redis_client)) == sorted(simulator.funnel_session_ids(funnel))


def test_dry_run_prints_and_enqueues_nothing(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    funnel = "fun-dry"
    simulator.set_funnels({funnel: 75})

    result = backfill(worker_env, "--funnel-id", funnel, "--dry-run")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == simulator.funnel_session_ids(funnel)
    assert redis_client.llen(FETCH_QUEUE) == 0
    assert saved_positions(redis_client) == {}


def test_sessions_every_sink_has_are_skipped(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    funnel = "fun-d"
    simulator.set_funnels({funnel: 60})
    everything = simulator.funnel_session_ids(funnel)
    # The fleet's destinations, as its workers register them when they start.
    redis_client.hset(SINKS, mapping={"webhook": "deliver.webhook", "stream": "deliver.stream"})
    for sid in everything[:10]:  # delivered to both sinks: skipped
        redis_client.set(delivered_key("webhook", sid), "1")
        redis_client.set(delivered_key("stream", sid), "1")
    for sid in everything[10:15]:  # only one sink has them: enqueued
        redis_client.set(delivered_key("webhook", sid), "1")

    result = backfill(worker_env, "--funnel-id", funnel)

    assert result.returncode == 0, result.stderr
    assert queued_ids(redis_client) == everything[10:]
    assert "10 already delivered" in result.stderr


def test_limit_caps_what_is_enqueued_and_a_rerun_continues(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    funnel = "fun-l"
    simulator.set_funnels({funnel: 130})
    everything = simulator.funnel_session_ids(funnel)

    first = backfill(worker_env, "--funnel-id", funnel, "--limit", "70")

    assert first.returncode == 0, first.stderr
    assert "stopped at --limit 70" in first.stderr
    assert queued_ids(redis_client) == everything[:70]

    second = backfill(worker_env, "--funnel-id", funnel)

    assert second.returncode == 0, second.stderr
    assert queued_ids(redis_client) == everything
    assert saved_positions(redis_client) == {}


def test_since_until_and_profile_filter_what_is_enqueued(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    funnel = "fun-t"
    simulator.set_funnels({funnel: 120})
    everything = simulator.funnel_session_ids(funnel)
    created = [datetime.fromtimestamp(funnel_created_at(funnel, i), UTC) for i in range(120)]
    since, until = created[90], created[20]  # newest first: index 20 is later than index 90

    dated = backfill(
        worker_env,
        "--funnel-id",
        funnel,
        "--since",
        since.isoformat(),
        "--until",
        until.isoformat(),
    )

    assert dated.returncode == 0, dated.stderr
    expected = [sid for sid, at in zip(everything, created, strict=True) if since <= at < until]
    assert queued_ids(redis_client) == expected
    assert len(expected) == 70
    assert "50 out of range" in dated.stderr

    redis_client.delete(FETCH_QUEUE)
    profile = funnel_profile_id(funnel, 6)
    by_profile = backfill(worker_env, "--funnel-id", funnel, "--profile-id", profile)

    assert by_profile.returncode == 0, by_profile.stderr
    assert queued_ids(redis_client) == [everything[6], everything[7]]  # pairs share a profile
    assert simulator.list_requests()[-1]["profile_id"] == profile


def test_bad_arguments_are_refused(worker_env: dict[str, str]) -> None:
    assert backfill(worker_env).returncode == 2  # --funnel-id is required
    assert backfill(worker_env, "--funnel-id", "f", "--since", "yesterday").returncode == 2
    assert backfill(worker_env, "--funnel-id", "f", "--limit", "0").returncode == 2
    reversed_dates = backfill(
        worker_env, "--funnel-id", "f", "--since", "2026-02-01", "--until", "2026-01-01"
    )
    assert reversed_dates.returncode == 2
    assert "--since must be before --until" in reversed_dates.stderr


def test_a_wrong_secret_stops_at_once(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    simulator.set_funnels({"fun-s": 10})

    result = backfill({**worker_env, "FUNNELFOX_SECRET": "secret_wrong"}, "--funnel-id", "fun-s")

    assert result.returncode == 1
    assert "401" in result.stderr
    assert "FUNNELFOX_SECRET" in result.stderr
    assert "secret_wrong" not in result.stderr
    assert len(simulator.list_requests()) == 1  # not retried
    assert redis_client.llen(FETCH_QUEUE) == 0


def test_backfilled_sessions_are_delivered_by_a_worker(
    worker_env: dict[str, str],
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
) -> None:
    funnel = "fun-e2e"
    simulator.set_funnels({funnel: 65})

    assert backfill(worker_env, "--funnel-id", funnel).returncode == 0
    worker = start_worker(worker_env)
    try:
        assert receiver.wait_for(65, timeout=60, distinct=True), worker.output
    finally:
        worker.stop()

    delivered = Counter(a.session_id for a in receiver.deliveries())
    assert set(delivered) == set(simulator.funnel_session_ids(funnel))
    assert set(delivered.values()) == {1}
    assert all(a.payload["data"]["trigger"] is None for a in receiver.deliveries())


def test_the_cli_lists_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker", "backfill", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    for flag in ("--funnel-id", "--profile-id", "--since", "--until", "--limit", "--dry-run"):
        assert flag in result.stdout
