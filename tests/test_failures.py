"""Every failure class ends where it should, with a real worker, a fake FunnelFox and receiver.

Tiny delays (backoff 0.05–0.5 s, timeouts 0.5 s) keep this fast; every wait is a condition
with a deadline. Attempt counts come from the fakes, which record each request.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import jsonschema
import orjson
import pytest
import redis

from tests.conftest import FOX_SECRET
from tests.processes import (
    Process,
    dead_letters,
    eventually,
    run_cli,
    settled,
    start_worker,
    wait_until,
)
from worker.schema import PUBLISHED
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import DEMO_WEBHOOK_SECRET, WebhookReceiver
from workshop.sessions import session_body

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 4
CAP_S = 0.5
SLACK_S = 1.5  # scheduling on a small, busy machine: ETA timers, prefork hand-off, polling


@pytest.fixture
def fault_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {
        **worker_env,
        "RETRY_BACKOFF_BASE_S": "0.05",
        "RETRY_BACKOFF_MAX_S": str(CAP_S),
        "RETRY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "FUNNELFOX_TIMEOUT_S": "0.5",
        "WEBHOOK_TIMEOUT_S": "0.5",
    }


@pytest.fixture
def worker(fault_env: dict[str, str]) -> Iterator[Process]:
    process = start_worker(fault_env)
    yield process
    process.stop()


def enqueue(env: dict[str, str], ids: list[str]) -> None:
    result = run_cli(["enqueue", "-"], env, stdin="\n".join(ids) + "\n")
    assert result.returncode == 0, result.stderr


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


UPSTREAM_RETRYABLE = [408, 425, 429, 500, 502, 503, 504, 524]


def test_upstream_failures_end_where_they_should(
    fault_env: dict[str, str],
    worker: Process,
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    recovers = {f"ses_u{code}-s{code}x2": 3 for code in UPSTREAM_RETRYABLE}
    recovers |= {"ses_udrop-dropx1": 2, "ses_uslow-slow1500x1": 2}
    dead = {
        "ses_u400-s400": ("fetch", "rejected", 1),
        "ses_u404-s404": ("fetch", "not_found", 1),
        "ses_u422-s422": ("fetch", "rejected", 1),
        "ses_unotjson-notjson": ("validate", "invalid_payload", 1),
        "ses_uinvalid-invalid": ("validate", "invalid_payload", 1),
        "ses_u503always-s503": ("fetch", "retries_exhausted", MAX_ATTEMPTS),
        "ses_u401-s401": ("fetch", "unauthorized", MAX_ATTEMPTS),
        "ses_u403-s403": ("fetch", "unauthorized", MAX_ATTEMPTS),
    }
    enqueue(fault_env, [*recovers, *dead])
    assert wait_until(lambda: settled(receiver, redis_client, recovers, dead), 60), worker.output

    def requests(session_id: str) -> int:
        return len(simulator.requests_for(session_id))

    for session_id, attempts in recovers.items():
        assert eventually(lambda s=session_id: requests(s), attempts) == attempts, session_id
    assert {d.session_id for d in receiver.deliveries()} == set(recovers)
    letters = dead_letters(redis_client)
    for session_id, (stage, reason, attempts) in dead.items():
        letter = letters[f"{stage}|{session_id}"]
        assert (letter["reason"], letter["attempts"]) == (reason, attempts), session_id
        assert requests(session_id) == attempts, session_id
        assert letter["error"]
        assert letter["first_seen_at"] <= letter["failed_at"]
    # Backoff spacing: every wait within the cap (plus scheduling slack), none negative.
    times = [t for t, _ in simulator.requests_for("ses_u503always-s503")]
    assert all(0 <= gap <= CAP_S + SLACK_S for gap in gaps(times))
    # A wrong secret is said loudly, once per worker process, and never with the secret.
    loud = worker.output.count("FunnelFox refused FUNNELFOX_SECRET")
    assert 1 <= loud <= 2
    assert FOX_SECRET not in worker.output


def test_real_session_shapes_are_delivered_and_only_unplaceable_ones_refused(
    fault_env: dict[str, str],
    worker: Process,
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    """What FunnelFox may send is delivered as sent; only bodies without a usable id or
    created_at are dead-lettered, at once."""
    delivered = {  # id → (dotted path in the enrichment, expected value)
        "ses_v-objreply": ("answers.height.height_picker", {"value": 180, "unit": "cm"}),
        "ses_v-boolreply": ("answers.consent.terms_checkbox", True),
        "ses_v-nouseragent": ("device", None),
        "ses_v-noattributes": ("geo", None),
        "ses_v-nullfields": ("answers", None),
        "ses_v-bare": ("utm", None),
        "ses_v-objreply-nouseragent": ("device", None),
    }
    dead = {
        f"ses_v-{token}": ("validate", "invalid_payload", 1)
        for token in ("notobject", "noid", "otherid", "nocreatedat", "invalid")
    }
    enqueue(fault_env, [*delivered, *dead])
    assert wait_until(lambda: settled(receiver, redis_client, delivered, dead), 60), worker.output
    assert wait_until(lambda: redis_client.xlen("test:enriched") == len(delivered), 10)

    schema = json.loads(PUBLISHED.read_text())
    letters = dead_letters(redis_client)
    for session_id, (path, expected) in delivered.items():
        (attempt,) = receiver.attempts_for(session_id)
        assert (attempt.accepted, attempt.verified) == (True, True), session_id
        assert session_body(session_id) in attempt.body, "data.session is the body as sent"
        jsonschema.validate(attempt.payload, schema)
        value = attempt.payload["data"]["enrichment"]
        for key in path.split("."):
            value = value[key]
        assert (value, type(value)) == (expected, type(expected)), session_id
        assert not any(key.endswith(f"|{session_id}") for key in letters), session_id
    for session_id, (stage, reason, attempts) in dead.items():
        letter = letters[f"{stage}|{session_id}"]
        assert (letter["reason"], letter["attempts"]) == (reason, attempts), session_id
        assert len(simulator.requests_for(session_id)) == 1, session_id
    assert "created_at" in letters["validate|ses_v-nocreatedat"]["error"]


def test_webhook_failures_end_where_they_should(
    fault_env: dict[str, str],
    worker: Process,
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    recovers = {
        "ses_h500-h500x2": 3,
        "ses_h502-h502x1": 2,
        "ses_h408-h408x1": 2,
        "ses_hdrop-hdropx1": 2,
        "ses_hslow-hslow1500x1": 2,
    }
    dead = {
        "ses_h410-h410": ("gone", 1),
        "ses_h404-h404": ("rejected", 1),
        "ses_h400-h400": ("rejected", 1),
        "ses_h302-h302": ("rejected", 1),
        "ses_h503always-h503": ("retries_exhausted", MAX_ATTEMPTS),
    }
    enqueue(fault_env, [*recovers, *dead])
    assert wait_until(lambda: settled(receiver, redis_client, recovers, dead), 60), worker.output
    # Every session reached the stream once, whatever the webhook did: sinks are independent.
    assert wait_until(lambda: redis_client.xlen("test:enriched") == len(recovers) + len(dead), 10)

    for session_id, attempts in {**recovers, **{k: v[1] for k, v in dead.items()}}.items():
        # hslow: the receiver records its first attempt only once it answers, late.
        count = eventually(lambda s=session_id: len(receiver.attempts_for(s)), attempts)
        seen = receiver.attempts_for(session_id)
        assert count == attempts, (session_id, [a.status for a in seen])
        assert len({a.webhook_id for a in seen}) == 1, "a retry keeps its webhook-id"
        assert len(simulator.requests_for(session_id)) == 1, "a webhook retry never refetches"
    letters = dead_letters(redis_client)
    for session_id, (reason, attempts) in dead.items():
        letter = letters[f"deliver:webhook|{session_id}"]
        assert (letter["reason"], letter["attempts"]) == (reason, attempts), session_id
    assert "redirect not followed" in letters["deliver:webhook|ses_h302-h302"]["error"]
    assert redis_client.hexists("ffe:dlq:payload", "deliver:webhook|ses_h410-h410")


@pytest.fixture
def retry_after_env(fault_env: dict[str, str]) -> dict[str, str]:
    return {**fault_env, "RETRY_BACKOFF_MAX_S": "2.5"}


def test_retry_after_is_honoured_and_capped(
    retry_after_env: dict[str, str],
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    ids = [
        "ses_ra-s429x1-ra1",
        "ses_rad-s503x1-rad2",
        "ses_racap-s429x1-ra60",
        "ses_hra-h429x1-hra1",
    ]
    enqueue(retry_after_env, ids)
    worker = start_worker(retry_after_env)
    try:
        assert receiver.wait_for(len(ids), timeout=60, distinct=True), worker.output
    finally:
        worker.stop()

    def gap(times: list[float]) -> float:
        (value,) = gaps(times)
        return value

    assert gap([t for t, _ in simulator.requests_for("ses_ra-s429x1-ra1")]) >= 1.0
    # An HTTP date two seconds ahead, at one-second resolution: at least one second away.
    assert gap([t for t, _ in simulator.requests_for("ses_rad-s503x1-rad2")]) >= 1.0
    capped = gap([t for t, _ in simulator.requests_for("ses_racap-s429x1-ra60")])
    assert 2.5 <= capped <= 2.5 + SLACK_S, "Retry-After beyond the cap waits the cap"
    hook = gap([a.received_at for a in receiver.attempts_for("ses_hra-h429x1-hra1")])
    assert hook >= 1.0


def test_duplicates_are_delivered_once_and_a_replay_delivers_again(
    fault_env: dict[str, str],
    worker: Process,
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    enqueue(fault_env, ["ses_dup", "ses_dup", "ses_gone1-h410x1"])
    assert receiver.wait_for(1, timeout=30, distinct=True)
    # Both sinks have it (the stream's delivery is its own task) before the next copy comes.
    assert wait_until(lambda: redis_client.exists("ffe:delivered:stream:ses_dup") == 1, 30)
    enqueue(fault_env, ["ses_dup"])  # FunnelFox sends events more than once
    assert wait_until(
        lambda: redis_client.hexists("ffe:dlq", "deliver:webhook|ses_gone1-h410x1"), 30
    )
    # The third copy went through the worker without a delivery: its fetch was skipped.
    assert wait_until(lambda: "already delivered to every sink" in worker.output, 30)
    assert len(receiver.attempts_for("ses_dup")) == 1
    assert redis_client.xlen("test:enriched") == 2

    listed = run_cli(["dlq", "list"], fault_env)
    assert listed.returncode == 0
    (record,) = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert (record["session_id"], record["stage"], record["reason"]) == (
        "ses_gone1-h410x1",
        "deliver:webhook",
        "gone",
    )

    replayed = run_cli(["dlq", "replay"], fault_env)
    assert replayed.returncode == 0, replayed.stderr
    assert wait_until(lambda: len(receiver.attempts_for("ses_gone1-h410x1")) == 2, 30)
    assert receiver.attempts_for("ses_gone1-h410x1")[-1].accepted
    assert len(simulator.requests_for("ses_gone1-h410x1")) == 1, "replay re-sent the payload"
    assert not redis_client.hexists("ffe:dlq", "deliver:webhook|ses_gone1-h410x1")

    again = run_cli(["dlq", "replay", "ses_dup"], fault_env)
    assert "delivering it again in full" in again.stderr
    assert wait_until(lambda: len(receiver.attempts_for("ses_dup")) == 2, 30)
    assert len({a.webhook_id for a in receiver.attempts_for("ses_dup")}) == 1

    enqueue(fault_env, ["ses_gone2-s404"])
    assert wait_until(lambda: redis_client.hexists("ffe:dlq", "fetch|ses_gone2-s404"), 30)
    purged = run_cli(["dlq", "purge", "ses_gone2-s404"], fault_env)
    assert "purged 1 dead letter(s)" in purged.stderr
    assert redis_client.hlen("ffe:dlq") == 0
    for output in (listed.stdout, worker.output):
        assert FOX_SECRET not in output
        assert DEMO_WEBHOOK_SECRET.removeprefix("whsec_") not in output
