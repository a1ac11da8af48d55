"""A fetch makes each session's first delivery itself; queues keep retries, paced and slow
destinations (worker/inline.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import redis
from pipelines import POLICY, RecordingSink, ok, run_pipeline
from processes import start_worker
from test_ledger_e2e import enqueue

from worker import errors
from worker.inline import InlineGate
from worker.keys import DUE, claim_key, delivered_key, ledger_key
from worker.ledger import Acceptance, Ledger, LedgerWriter
from worker.pipeline import Pipeline, StageResult
from worker.ratelimit import FleetRateLimit
from worker.sinks.base import Delivery, Outcome, Sink
from worker.work import Work
from workshop.receiver import WebhookReceiver


class SlowSink(RecordingSink):
    """Takes ``delay_s`` over every delivery."""

    def __init__(self, name: str, delay_s: float) -> None:
        super().__init__(name, ok)
        self.delay_s = delay_s

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        await asyncio.sleep(self.delay_s)
        return await super().deliver(deliveries)


def fetch_inline(
    redis_url: str,
    sinks: Sequence[Sink],
    batches: Sequence[Sequence[Work]],
    *,
    gate: InlineGate,
    limited: Sequence[str] = (),
    with_ledger: bool = False,
) -> tuple[list[StageResult], list[StageResult]]:
    """Run each batch through ``Pipeline.fetch`` with ``on_ready``; return what each fetch
    returned and what it handed to the task layer to publish."""
    handed: list[StageResult] = []

    async def fetch_each(pipeline: Pipeline) -> list[StageResult]:
        return [await pipeline.fetch(batch, on_ready=handed.append) for batch in batches]

    fetched = run_pipeline(
        redis_url,
        sinks,
        fetch_each,
        with_client=lambda client: {
            "sink_limits": {name: FleetRateLimit(client, rate_per_s=1000) for name in limited},
            "ledger": Ledger(client, ttl_s=60) if with_ledger else None,
        },
        inline=gate,
    )
    return fetched, handed


def test_a_fetch_delivers_its_sessions_itself(redis_url: str, redis_client: redis.Redis) -> None:
    webhook, stream = RecordingSink("webhook", ok), RecordingSink("stream", ok)
    [result], handed = fetch_inline(
        redis_url, [webhook, stream], [[Work("ses_i1"), Work("ses_i2")]], gate=InlineGate()
    )
    assert handed == []  # nothing to publish: no deliver message
    assert sorted(d.session_id for d in webhook.received) == ["ses_i1", "ses_i2"]
    assert sorted(d.session_id for d in stream.received) == ["ses_i1", "ses_i2"]
    records = delivered_key("webhook", "ses_i1"), delivered_key("stream", "ses_i2")
    assert redis_client.exists(*records) == 2
    assert sorted(result.done).count("ses_i1") == 3  # fetched, then delivered to both


def test_a_fetch_and_its_inline_delivery_are_one_ledger_update(
    redis_url: str, redis_client: redis.Redis
) -> None:
    ids = ["ses_l1", "ses_l2", "ses_l3"]
    LedgerWriter(redis_client).accept([Acceptance(i) for i in ids], "console")
    hgetall_before = hgetall_calls(redis_client)
    fetch_inline(
        redis_url,
        [RecordingSink("webhook", ok)],
        [[Work(i) for i in ids]],
        gate=InlineGate(),
        with_ledger=True,
    )
    # The ledger script reads a session's entry (HGETALL) once per update: once per session.
    assert hgetall_calls(redis_client) - hgetall_before == len(ids)
    for session_id in ids:
        entry = redis_client.hgetall(ledger_key(session_id))
        assert entry[b"st"] == b"delivered"
        logged = sorted(
            v.decode().split(",")[0] for k, v in entry.items() if k[:1] == b"l" and k[1:].isdigit()
        )
        assert logged == ["a", "d:webhook", "f"]


def test_a_delivery_another_worker_holds_is_looked_at_again_as_a_delivery(
    redis_url: str, redis_client: redis.Redis
) -> None:
    LedgerWriter(redis_client).accept([Acceptance("ses_held")], "console")
    redis_client.set(claim_key("webhook", "ses_held"), "another-worker", px=5000)
    sink = RecordingSink("webhook", ok)
    fetch_inline(redis_url, [sink], [[Work("ses_held")]], gate=InlineGate(), with_ledger=True)
    assert sink.received == []
    # Scheduled as the webhook's delivery (it was scheduled as a fetch, fetched again).
    assert [m.decode() for m in redis_client.zrange(DUE, 0, -1)] == ["deliver:webhook|ses_held"]


def hgetall_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


def test_a_failed_inline_delivery_is_retried_on_its_destinations_queue(redis_url: str) -> None:
    failing = RecordingSink("webhook", lambda _: errors.SinkUnavailable("webhook answered 503"))
    _, handed = fetch_inline(redis_url, [failing], [[Work("ses_i3")]], gate=InlineGate())
    assert [d.session_id for d in failing.received] == ["ses_i3"]
    [retry] = handed
    assert retry.deliveries == {}
    assert retry.retries == []  # not fetched again
    [(work, delay)] = retry.delivery_retries["webhook"]
    assert (work.session_id, work.attempts) == ("ses_i3", 1)
    assert work.payload is not None  # the built payload travels with it
    assert 0 < delay <= POLICY.max_s * 1.1


def test_a_rate_limited_destination_keeps_its_queue(redis_url: str) -> None:
    paced, free = RecordingSink("paced", ok), RecordingSink("free", ok)
    _, handed = fetch_inline(
        redis_url, [paced, free], [[Work("ses_i4")]], gate=InlineGate(), limited=["paced"]
    )
    assert [d.session_id for d in free.received] == ["ses_i4"]
    assert paced.received == []
    [queued] = handed
    assert [w.session_id for w in queued.deliveries["paced"]] == ["ses_i4"]


def test_a_slow_destination_goes_back_to_its_queue_for_a_while(redis_url: str) -> None:
    slow, quick = SlowSink("slow", 0.2), RecordingSink("quick", ok)
    gate = InlineGate(slow_s=0.1, cooldown_s=60)
    _, handed = fetch_inline(
        redis_url, [slow, quick], [[Work("ses_i5")], [Work("ses_i6")]], gate=gate
    )
    # The first delivery was made inline and found slow; the next fetch queues that one only.
    assert [d.session_id for d in slow.received] == ["ses_i5"]
    assert [d.session_id for d in quick.received] == ["ses_i5", "ses_i6"]
    [queued] = handed
    assert set(queued.deliveries) == {"slow"}
    assert [w.session_id for w in queued.deliveries["slow"]] == ["ses_i6"]


def test_the_gate_reopens_after_its_cooldown() -> None:
    now = [100.0]
    gate = InlineGate(slow_s=1.0, cooldown_s=30, clock=lambda: now[0])
    gate.observe("crm", 0.5)
    assert gate.allows("crm")
    gate.observe("crm", 1.5)
    assert not gate.allows("crm")
    assert gate.allows("warehouse")  # per destination
    now[0] += 30
    assert gate.allows("crm")


@pytest.mark.integration
@pytest.mark.parametrize("inline", [True, False], ids=["inline", "queued"])
def test_a_worker_sends_no_deliver_message_for_a_first_attempt(
    inline: bool, worker_env: dict[str, str], receiver: WebhookReceiver
) -> None:
    env = {**worker_env, "INLINE_DELIVERY": str(inline).lower()}
    ids = [f"ses_inl{n}" for n in range(5)]
    enqueue(env, ids)
    worker = start_worker(env)
    try:
        assert receiver.wait_for(len(ids), timeout=30, distinct=True), worker.output
    finally:
        worker.stop()
    delivers = worker.output.count("Task worker.tasks.deliver[")
    assert (delivers == 0) if inline else (delivers > 0), worker.output
