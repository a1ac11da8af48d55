"""dlq replay on a real Redis: batches of WORKER_BATCH_SIZE, and no record deleted that it did
not read (a replayed session that fails again at once keeps its new dead letter)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import redis
import redis.asyncio as aioredis

from worker.cli import dlq
from worker.deadletters import DeadLetter, DeadLetters
from worker.work import Work


def store(
    redis_url: str, letters: Sequence[DeadLetter], payloads: Sequence[bytes | None] = ()
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        await DeadLetters(client).add(letters, payloads)
        await client.aclose()

    asyncio.run(main())


def letter(session_id: str, stage: str = "fetch", reason: str = "not_found") -> DeadLetter:
    return DeadLetter(session_id, stage, reason, "FunnelFox answered 404", 1, 1.0, time.time())


class RecordingProducer:
    """The producer's sending side, recorded; ``on_send`` plays what a fast worker does."""

    def __init__(self, on_send=None) -> None:  # type: ignore[no-untyped-def]
        self.fetches: list[list[str]] = []
        self.deliveries: list[tuple[str, list[str]]] = []
        self.on_send = on_send

    def session(self):  # type: ignore[no-untyped-def]
        import contextlib

        return contextlib.nullcontext(self)

    def send_fetches(
        self, works: Sequence[Work], countdown: float | None = None, *, accept: str | None = None
    ) -> None:
        self.fetches.append([w.session_id for w in works])
        if self.on_send:
            self.on_send(works)

    def send_deliveries(
        self,
        sink: str,
        works: Sequence[Work],
        countdown: float | None = None,
        *,
        accept: str | None = None,
    ) -> None:
        self.deliveries.append((sink, [w.session_id for w in works]))


def test_a_replayed_session_that_fails_again_at_once_keeps_its_new_dead_letter(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store(redis_url, [letter("ses_again-s404")])

    def worker_fails_it_again(works: Sequence[Work]) -> None:
        # Within milliseconds of the publish, before replay deletes what it read.
        for work in works:
            again = letter(work.session_id)
            redis_client.hset("ffe:dlq", again.key, again.to_json())

    producer = RecordingProducer(worker_fails_it_again)
    plan = dlq.replay(redis_url, [], producer, batch_size=100)  # type: ignore[arg-type]

    assert [lt.session_id for lt in plan.letters] == ["ses_again-s404"]
    assert producer.fetches == [["ses_again-s404"]]
    records = redis_client.hkeys("ffe:dlq")
    assert records == [b"fetch|ses_again-s404"]  # exactly once: the new one


def test_a_large_replay_is_sent_in_batches(redis_url: str, redis_client: redis.Redis) -> None:
    fetches = [letter(f"ses_f{n:03d}") for n in range(250)]
    deliveries = [
        letter(f"ses_d{n:03d}", "deliver:webhook", "retries_exhausted") for n in range(130)
    ]
    store(redis_url, [*fetches, *deliveries], [None] * 250 + [b'{"p": 1}'] * 130)
    producer = RecordingProducer()

    dlq.replay(redis_url, [], producer, batch_size=100)  # type: ignore[arg-type]

    assert sorted(len(batch) for batch in producer.fetches) == [50, 100, 100]
    assert sorted(len(ids) for _, ids in producer.deliveries) == [30, 100]
    assert {sink for sink, _ in producer.deliveries} == {"webhook"}
    assert redis_client.hlen("ffe:dlq") == 0
    assert redis_client.hlen("ffe:dlq:payload") == 0
