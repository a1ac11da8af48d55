"""Named destinations with real worker processes and real Standard Webhooks receivers.

Four destinations from one DESTINATIONS_FILE: a webhook filtered by funnel and signed with
two keys (its receiver holds only the old one), an unfiltered webhook, one that is gone or
hangs, and a stream. Each gets exactly what it should; the breaker pauses a failing one
without losing a session; an operator pauses and resumes one from the console.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from processes import dead_letters, run_cli, start_worker, wait_until

from workshop.receiver import WebhookReceiver
from workshop.sessions import make_session

pytestmark = pytest.mark.integration

KEY_NEW = "whsec_AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
KEY_OLD = "whsec_AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
KEY_ALL = "whsec_AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="


@pytest.fixture
def receivers() -> Iterator[dict[str, WebhookReceiver]]:
    found = {
        "crm": WebhookReceiver(secret=KEY_OLD),  # holds one of crm's two keys
        "all": WebhookReceiver(secret=KEY_ALL),
        "dead": WebhookReceiver(secret=KEY_ALL),
    }
    for receiver in found.values():
        receiver.start()
    yield found
    for receiver in found.values():
        receiver.stop()


def destinations_env(
    worker_env: dict[str, str],
    tmp_path: Path,
    receivers: dict[str, WebhookReceiver],
    funnels: list[str],
    dead_timeout_s: int = 2,
    **extra: str,
) -> dict[str, str]:
    text = f"""
[[destinations]]
name = "crm"
type = "webhook"
url = "{receivers["crm"].url}"
secrets = ["${{CRM_KEY_NEW}}", "${{CRM_KEY_OLD}}"]
funnel_ids = {json.dumps(funnels)}

[[destinations]]
name = "all"
type = "webhook"
url = "{receivers["all"].url}"
secret = "{KEY_ALL}"

[[destinations]]
name = "dead"
type = "webhook"
url = "{receivers["dead"].url}"
secret = "{KEY_ALL}"
timeout_s = {dead_timeout_s}

[[destinations]]
name = "warehouse"
type = "redis_stream"
stream = "test:warehouse"
"""
    path = tmp_path / "destinations.toml"
    path.write_text(text)
    env = {
        k: v
        for k, v in worker_env.items()
        if k not in ("WEBHOOK_URL", "WEBHOOK_SECRET", "OUTPUT_STREAM")
    }
    env.update(DESTINATIONS_FILE=str(path), CRM_KEY_NEW=KEY_NEW, CRM_KEY_OLD=KEY_OLD, **extra)
    return env


def enqueue(env: dict[str, str], ids: list[str]) -> None:
    result = run_cli(["enqueue", "-"], env, stdin="\n".join(ids) + "\n")
    assert result.returncode == 0, result.stderr


def test_four_destinations_each_get_what_they_should(
    worker_env: dict[str, str],
    tmp_path: Path,
    receivers: dict[str, WebhookReceiver],
    redis_client: redis.Redis,
) -> None:
    ids = [f"ses_dest{n:02d}" for n in range(40)]
    funnel_of = {sid: make_session(sid)["funnel_id"] for sid in ids}
    chosen = sorted(set(funnel_of.values()))[:2]
    for_crm = sorted(sid for sid in ids if funnel_of[sid] in chosen)
    env = destinations_env(worker_env, tmp_path, receivers, chosen)
    receivers["dead"].set_outage(410)
    enqueue(env, ids)
    worker = start_worker(env)
    try:
        assert receivers["all"].wait_for(len(ids), timeout=60, distinct=True), worker.output
        assert receivers["crm"].wait_for(len(for_crm), timeout=30, distinct=True), worker.output
        assert wait_until(lambda: redis_client.xlen("test:warehouse") == len(ids), 30)
        assert wait_until(lambda: len(dead_letters(redis_client)) == len(ids), 30), worker.output
    finally:
        worker.stop()

    # Every delivery verified by a receiver holding one key of the destination's.
    assert all(a.verified for r in receivers.values() for a in r.attempts())
    crm = Counter(d.session_id for d in receivers["crm"].deliveries())
    assert sorted(crm) == for_crm  # the funnel filter
    assert set(crm.values()) == {1}
    everyone = Counter(d.session_id for d in receivers["all"].deliveries())
    assert sorted(everyone) == ids
    assert set(everyone.values()) == {1}
    crm_ids = {d.session_id: d.webhook_id for d in receivers["crm"].deliveries()}
    all_ids = {d.session_id: d.webhook_id for d in receivers["all"].deliveries()}
    assert all(crm_ids[sid] != all_ids[sid] for sid in crm_ids)  # distinct per destination
    entries = redis_client.xrange("test:warehouse")
    assert sorted(f[b"session_id"].decode() for _, f in entries) == ids
    assert all(f[b"webhook_id"].startswith(b"msg_") for _, f in entries)
    letters = dead_letters(redis_client)
    assert {(k.split("|")[0], v["reason"]) for k, v in letters.items()} == {
        ("deliver:dead", "gone")
    }
    # The console lists them, with their counts and no credentials.
    listed = run_cli(["destinations"], env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert set(rows) == {"crm", "all", "dead", "warehouse"}
    assert rows["crm"]["filters"] == {"funnel_ids": chosen}
    assert rows["all"]["delivered"] == len(ids)
    assert rows["dead"]["dead_lettered"] == len(ids)
    assert KEY_NEW not in listed.stdout
    assert KEY_NEW.removeprefix("whsec_") not in worker.output


HANG_TIMEOUT_S = 20


@pytest.mark.parametrize("inline", ["true", "false"], ids=["inline", "queued"])
def test_a_hanging_destination_holds_up_no_other(
    inline: str,
    worker_env: dict[str, str],
    tmp_path: Path,
    receivers: dict[str, WebhookReceiver],
    redis_client: redis.Redis,
) -> None:
    ids = [f"ses_hang{n:02d}" for n in range(60)]
    env = destinations_env(
        worker_env,
        tmp_path,
        receivers,
        [],
        dead_timeout_s=HANG_TIMEOUT_S,
        WORKER_BATCH_SIZE="5",  # twelve messages for two pool processes
        INLINE_DELIVERY=inline,
    )
    receivers["dead"].set_latency(120_000)  # never answers within its timeout
    enqueue(env, ids)
    worker = start_worker(env)
    try:
        # Every other destination has every session before the hanging one's first attempts
        # reach their timeout: nothing waited for them. (A pool process held by each attempt
        # would keep ten of the twelve messages waiting 20 s behind the first two.)
        give_up = time.monotonic() + HANG_TIMEOUT_S - 5
        assert receivers["all"].wait_for(len(ids), timeout=HANG_TIMEOUT_S - 5, distinct=True), (
            worker.output
        )
        in_stream = lambda: redis_client.xlen("test:warehouse") == len(ids)  # noqa: E731
        assert wait_until(in_stream, max(0.1, give_up - time.monotonic())), worker.output
        assert receivers["dead"].accepted_count() == 0
        # Its attempts, left to finish in the background, end at the timeout and are recorded
        # there: they count as failures, and its breaker opens.
        assert worker.wait_for_output("destination dead paused", 60), worker.output
    finally:
        worker.stop(40)
    assert dead_letters(redis_client) == {}


def test_the_breaker_pauses_a_failing_destination_and_loses_nothing(
    worker_env: dict[str, str],
    tmp_path: Path,
    receivers: dict[str, WebhookReceiver],
    redis_client: redis.Redis,
) -> None:
    env = destinations_env(
        worker_env,
        tmp_path,
        receivers,
        [],
        BREAKER_FAILURES="5",
        BREAKER_PROBE_S="1",
        RETRY_MAX_ATTEMPTS="3",  # without the breaker, every session would be dead in seconds
    )
    ids = [f"ses_brk{n:02d}" for n in range(30)]
    receivers["all"].set_outage(503)
    enqueue(env, ids)
    worker = start_worker(env)
    try:
        assert wait_until(lambda: "destination all paused" in worker.output, 30), worker.output
        opened_at = len(receivers["all"].attempts())
        assert wait_until(lambda: len(receivers["all"].attempts()) >= opened_at + 2, 10)
        receivers["all"].set_outage(None)
        assert receivers["all"].wait_for(len(ids), timeout=60, distinct=True), worker.output
        assert "destination all resumed" in worker.output
    finally:
        worker.stop()
    letters = [k for k in dead_letters(redis_client) if k.startswith("deliver:all|")]
    assert letters == []  # paused deliveries kept their retries
    assert Counter(d.session_id for d in receivers["all"].deliveries()) == Counter(ids)


def test_a_long_outage_uses_up_no_retries_however_many_probes_fail(
    worker_env: dict[str, str],
    tmp_path: Path,
    receivers: dict[str, WebhookReceiver],
    redis_client: redis.Redis,
) -> None:
    max_attempts = 3
    env = destinations_env(
        worker_env,
        tmp_path,
        receivers,
        [],
        BREAKER_FAILURES="2",
        BREAKER_PROBE_S="0.3",
        RETRY_MAX_ATTEMPTS=str(max_attempts),
    )
    ids = ["ses_probe0", "ses_probe1"]
    receivers["all"].set_outage(503)
    enqueue(env, ids)
    worker = start_worker(env)

    def dead() -> list[str]:
        return [k for k in dead_letters(redis_client) if k.startswith("deliver:all|")]

    try:
        assert wait_until(lambda: "destination all paused" in worker.output, 30), worker.output
        # More failed probes than both sessions' retries together (or a dead letter first).
        enough = len(ids) * max_attempts + 1
        wait_until(lambda: bool(dead()) or len(receivers["all"].attempts()) >= enough, 30)
        assert dead() == []
        assert len(receivers["all"].attempts()) >= enough, worker.output
        receivers["all"].set_outage(None)
        assert receivers["all"].wait_for(len(ids), timeout=30, distinct=True), worker.output
    finally:
        worker.stop()
    assert dead() == []
    assert Counter(d.session_id for d in receivers["all"].deliveries()) == Counter(ids)


def test_an_operator_pauses_and_resumes_a_destination(
    worker_env: dict[str, str],
    tmp_path: Path,
    receivers: dict[str, WebhookReceiver],
    redis_client: redis.Redis,
) -> None:
    env = destinations_env(worker_env, tmp_path, receivers, [], BREAKER_PROBE_S="1")
    worker = start_worker(env)
    try:
        paused = run_cli(["destinations", "pause", "all"], env)
        assert paused.returncode == 0, paused.stderr
        assert run_cli(["destinations", "pause", "nowhere"], env).returncode == 1
        ids = [f"ses_pause{n:02d}" for n in range(20)]
        enqueue(env, ids)
        assert wait_until(lambda: redis_client.xlen("test:warehouse") == len(ids), 30)
        rows = {
            r["name"]: r
            for r in map(json.loads, run_cli(["destinations"], env).stdout.splitlines())
        }
        assert rows["all"]["paused"] is True
        assert receivers["all"].attempts() == []  # nothing attempted while paused
        assert run_cli(["destinations", "resume", "all"], env).returncode == 0
        assert receivers["all"].wait_for(len(ids), timeout=60, distinct=True), worker.output
    finally:
        worker.stop()
    assert not [k for k in dead_letters(redis_client) if k.startswith("deliver:all|")]
