"""The producer on a real Redis: what ``publish_many`` puts in the broker and the ledger."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from worker.conversions import Conversion
from worker.keys import ledger_key
from worker.messages import read_batch_call, read_session_call
from worker.producer import BATCH_TASK_NAME, QUEUE, Producer
from worker.trigger import Trigger
from worker.work import Work


def messages(client: redis.Redis) -> list[dict[str, Any]]:
    """Every message waiting in the enrich queue, oldest first, its body decoded."""
    found = []
    for raw in reversed(client.lrange(QUEUE, 0, -1)):
        message = json.loads(raw)
        message["body"] = json.loads(base64.b64decode(message["body"]))
        found.append(message)
    return found


@pytest.fixture
def producer(redis_url: str) -> Iterator[Producer]:
    made = Producer.connect(redis_url, timeout_s=2)
    yield made
    made.close()


def trigger(event_id: str, event_type: str = "onboarding.completed") -> dict[str, Any]:
    return Trigger(event_id=event_id, type=event_type).model_dump(mode="json")


def test_publish_many_is_one_batch_message_and_one_acceptance_each(
    producer: Producer, redis_client: redis.Redis
) -> None:
    conversion = Conversion("purchase.completed", {"price": 999}, "ses_A")
    works = [
        Work("ses_A", trigger=trigger("evt_a")),
        Work("evt_c", trigger=trigger("evt_c", "purchase.completed"), event=conversion),
        Work("ses_B", trigger=trigger("evt_b")),
    ]

    producer.publish_many(works)

    [message] = messages(redis_client)
    assert message["headers"]["task"] == BATCH_TASK_NAME
    assert message["headers"]["argsrepr"] == "[ses_A, evt_c, ses_B]"
    assert message["body"][:2] == [[[w.to_message() for w in works]], {}]
    for work in works:
        entry = redis_client.hgetall(ledger_key(work.session_id))
        assert (entry[b"st"], entry[b"s"]) == (b"queued", b"ingress")


def test_a_unit_listed_twice_is_sent_once_as_first_listed(
    producer: Producer, redis_client: redis.Redis
) -> None:
    first = Work("ses_A", trigger=trigger("evt_1"))

    producer.publish_many([first, Work("ses_B"), Work("ses_A", trigger=trigger("evt_2"))])

    [message] = messages(redis_client)
    [[items], _, _] = message["body"]
    assert [item["id"] for item in items] == ["ses_A", "ses_B"]
    assert items[0] == first.to_message()


def test_a_batch_item_reads_as_the_single_session_message_did() -> None:
    """The worker sees the same session and trigger whichever of the two messages brought it."""
    sent = trigger("evt_1")
    work = Work("ses_A", trigger=sent)

    [from_batch] = read_batch_call(([work.to_message()],), {}).works
    [from_session] = read_session_call(("ses_A",), {"trigger": sent}).works

    assert from_batch == work
    assert (from_batch.session_id, from_batch.trigger, from_batch.event) == (
        from_session.session_id,
        from_session.trigger,
        from_session.event,
    )


def test_publish_many_raises_when_redis_is_away() -> None:
    closed = Producer.connect("redis://127.0.0.1:1/0", timeout_s=0.2)
    try:
        with pytest.raises(redis.ConnectionError):  # the ledger's write, before the broker
            closed.publish_many([Work("ses_A")])
    finally:
        closed.close()
