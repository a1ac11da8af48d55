"""Pipeline metrics: batches add to one Redis hash; /metrics renders them with queue depths."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from worker.metrics import MetricsBatch, render


def families(client: redis.Redis) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(render(client).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_batches_from_several_workers_add_up(redis_url: str, redis_client: redis.Redis) -> None:
    async def worker_batch(delivered: int, latency_s: float) -> None:
        client = aioredis.Redis.from_url(redis_url)
        batch = MetricsBatch()
        batch.inc("sessions_fetched", delivered)
        batch.inc("sessions_delivered", delivered, sink="webhook")
        batch.inc("dead_letters", stage="fetch", reason="not_found")
        batch.inc("retries", 2, stage="deliver:webhook", reason="sink_unavailable")
        for _ in range(delivered):
            batch.observe("fetch_duration_seconds", latency_s)
            batch.observe("delivery_duration_seconds", latency_s, sink="webhook")
        await batch.flush(client)
        await client.aclose()

    asyncio.run(worker_batch(3, 0.02))
    asyncio.run(worker_batch(2, 7.0))
    redis_client.rpush("enrich", "m1", "m2")
    redis_client.hset("ffe:dlq", "fetch|ses_x", "{}")

    found = families(redis_client)
    assert found["funnelfox_sessions_fetched_total"][()] == 5
    assert found["funnelfox_sessions_delivered_total"][(("sink", "webhook"),)] == 5
    assert found["funnelfox_dead_letters_total"][(("reason", "not_found"), ("stage", "fetch"))] == 2
    assert (
        found["funnelfox_retries_total"][
            (("reason", "sink_unavailable"), ("stage", "deliver:webhook"))
        ]
        == 4
    )
    buckets = found["funnelfox_fetch_duration_seconds_bucket"]
    assert buckets[(("le", "0.025"),)] == 3
    assert buckets[(("le", "5.0"),)] == 3
    assert buckets[(("le", "10.0"),)] == 5
    assert buckets[(("le", "+Inf"),)] == 5
    assert found["funnelfox_fetch_duration_seconds_sum"][()] == 3 * 0.02 + 2 * 7.0
    assert found["funnelfox_queue_depth"][(("queue", "enrich"),)] == 2
    assert found["funnelfox_dead_letters_stored"][()] == 1


def test_an_empty_batch_writes_nothing(redis_url: str, redis_client: redis.Redis) -> None:
    async def flush() -> None:
        client = aioredis.Redis.from_url(redis_url)
        await MetricsBatch().flush(client)
        await client.aclose()

    asyncio.run(flush())
    assert not redis_client.exists("ffe:metrics")
