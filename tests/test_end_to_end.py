"""The whole job with real parts: the CLI enqueues, a real worker delivers to both sinks."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import jsonschema
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FOX_SECRET
from tests.processes import run_cli, run_python, start_worker, wait_until
from worker.metrics import render as render_metrics
from worker.schema import PUBLISHED
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import DEMO_WEBHOOK_SECRET, WebhookReceiver

pytestmark = pytest.mark.integration

IDS = [f"ses_e2e{i:03d}" for i in range(25)] + ["ses_e2e-anon", "ses_e2e-extra"]


def stream_payloads(client: redis.Redis, stream: str) -> dict[str, dict[str, Any]]:
    entries = client.xrange(stream)
    return {f[b"session_id"].decode(): orjson.loads(f[b"payload"]) for _, f in entries}


def test_cli_enqueued_sessions_reach_both_sinks_once_signed_and_enriched(
    worker_env: dict[str, str],
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    stdin = "\n".join(IDS[5:]) + "\n"
    enqueued = run_cli(["enqueue", *IDS[:5], "-"], worker_env, stdin=stdin)
    assert enqueued.returncode == 0, enqueued.stderr
    assert f"enqueued {len(IDS)} session id(s), refused 0" in enqueued.stderr

    worker = start_worker(worker_env)
    try:
        assert receiver.wait_for(len(IDS), timeout=60, distinct=True)
        assert wait_until(lambda: redis_client.xlen("test:enriched") >= len(IDS), 30)
    finally:
        output = worker.output
        assert worker.stop() == 0, output
        output = worker.output

    deliveries = receiver.deliveries()
    assert sorted(d.session_id for d in deliveries) == sorted(IDS)  # each exactly once
    assert all(d.verified for d in deliveries)
    assert len({d.webhook_id for d in deliveries}) == len(IDS)

    schema = json.loads(PUBLISHED.read_text())
    in_stream = stream_payloads(redis_client, "test:enriched")
    assert sorted(in_stream) == sorted(IDS)
    for delivery in deliveries:
        payload = delivery.payload
        jsonschema.validate(payload, schema)
        assert payload == in_stream[delivery.session_id]
        enrichment = payload["data"]["enrichment"]
        assert enrichment["device"]["type"] in {"mobile", "tablet", "desktop", "bot", "other"}
        assert enrichment["created_at"].endswith("Z")
    extra = next(d.payload for d in deliveries if d.session_id == "ses_e2e-extra")
    assert "fox_extra_field" in extra["data"]["session"]

    # The fleet's metrics moved with the sessions (what the web process serves on /metrics).
    metrics = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(render_metrics(redis_client).decode())
        for sample in family.samples
    }
    assert metrics[("funnelfox_sessions_fetched_total", ())] == len(IDS)
    assert metrics[("funnelfox_fetch_duration_seconds_count", ())] == len(IDS)
    for sink in ("webhook", "stream"):
        assert metrics[("funnelfox_sessions_delivered_total", (("sink", sink),))] == len(IDS)
        count = metrics[("funnelfox_delivery_duration_seconds_count", (("sink", sink),))]
        assert count == len(IDS)
    # One GET per session: nothing fetched twice, and nothing leaked into the worker's log.
    assert all(len(simulator.requests_for(i)) == 1 for i in IDS)
    assert FOX_SECRET not in output
    assert DEMO_WEBHOOK_SECRET not in output
    assert DEMO_WEBHOOK_SECRET.removeprefix("whsec_") not in output


def test_bad_ids_are_refused_before_any_request(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    bad = ["../etc/passwd", "ses 1", "x" * 129, "ses_ok?admin=1"]
    result = run_cli(["enqueue", "ses_good1", *bad, "-"], worker_env, stdin="\n\nses_good2\n%00\n")
    assert result.returncode == 1
    assert "enqueued 2 session id(s), refused 5" in result.stderr
    for fragment in ("argument 2", "argument 5", "stdin line 4", "129 characters"):
        assert fragment in result.stderr
    queued = [orjson.loads(m) for m in redis_client.lrange("enrich", 0, -1)]
    ids = Counter(item["id"] for message in queued for item in _args(message)[0])
    assert ids == Counter({"ses_good1": 1, "ses_good2": 1})


def test_a_foreign_producers_bad_id_is_dead_lettered_without_a_request(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, redis_client: redis.Redis
) -> None:
    """A producer elsewhere may bypass the CLI: the task refuses the id and says why."""
    send = (
        "from worker.tasks import enrich_session\n"
        "enrich_session.delay('../../admin')\n"
        "enrich_session.delay('ses_fine')\n"
    )
    run_python(send, worker_env)
    worker = start_worker(worker_env)
    try:
        assert wait_until(lambda: redis_client.hexists("ffe:dlq", "fetch|../../admin"), 30)
        assert wait_until(lambda: redis_client.xlen("test:enriched") == 1, 30)
    finally:
        worker.stop()
    record = orjson.loads(redis_client.hget("ffe:dlq", "fetch|../../admin") or b"{}")
    assert record["reason"] == "invalid_id"
    assert simulator.total_requests == 1  # ses_fine only


def test_large_stdin_is_streamed_in_batches(
    worker_env: dict[str, str], redis_client: redis.Redis
) -> None:
    count = 5000
    stdin = "".join(f"ses_bulk{i}\n" for i in range(count))
    result = run_cli(["enqueue", "-"], worker_env, stdin=stdin)
    assert result.returncode == 0, result.stderr
    messages = [orjson.loads(m) for m in redis_client.lrange("enrich", 0, -1)]
    sizes = [len(_args(m)[0]) for m in messages]
    assert sum(sizes) == count
    assert max(sizes) == int(worker_env["WORKER_BATCH_SIZE"])


def _args(message: dict[str, Any]) -> Any:
    """The positional arguments of a Celery protocol-2 message on a Redis list."""
    import base64

    body = orjson.loads(base64.b64decode(message["body"]))
    return body[0]


def test_each_message_lands_in_its_own_queue_only(
    worker_env: dict[str, str], redis_client: redis.Redis
) -> None:
    """Once a worker has declared every queue, a message still goes to one queue, not all."""
    worker = start_worker(worker_env)  # declares enrich, deliver.webhook, deliver.stream
    worker.stop()
    send = (
        "from worker.tasks import producer\n"
        "from worker.work import Work\n"
        "producer.send_fetches([Work('ses_q1')])\n"
        "producer.send_deliveries('webhook', [Work('ses_q2', payload=b'{}')])\n"
    )
    run_python(send, worker_env)
    lengths = {q: redis_client.llen(q) for q in ("enrich", "deliver.webhook", "deliver.stream")}
    assert lengths == {"enrich": 1, "deliver.webhook": 1, "deliver.stream": 0}
