"""Tasks sent by producers we do not control: every shape ends delivered or dead-lettered.

Nothing a foreign producer sends under our task names may raise before our code runs (a Celery
FAILURE nobody sees), loop for ever, or deliver a payload that breaks the published schema.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import redis
from processes import dead_letters, run_python, start_worker, wait_until

from worker.schema import PUBLISHED
from workshop.receiver import WebhookReceiver

pytestmark = pytest.mark.integration

SEND = """
import os
from celery import Celery
app = Celery("foreign", broker=os.environ["REDIS_URL"], set_as_current=False)
def send(name, *args, queue="enrich", **kwargs):
    app.send_task(name, args=list(args), kwargs=kwargs, queue=queue)
S, B, D = "worker.tasks.enrich_session", "worker.tasks.enrich_batch", "worker.tasks.deliver"
send(S, 123)                                   # an integer id
send(S, "../etc/passwd")                       # breaks the id rules
send(S)                                        # no id at all
send(S, "ses_fx1", source="crm")               # an unknown keyword
send(S, "ses_fx2", "an extra positional")
send(S, "ses_fx3", trigger="not an object")
send(S, "ses_fx4", trigger={"event_id": "evt_fx4", "colour": "red", "created_at": "soon"})
send(B, [{"first_seen_at": 1}, {"id": "ses_fx5", "first_seen_at": "yesterday"}, "junk"])
send(B, "not a list")
send(D, ["webhook"], [{"id": "ses_fx6", "payload": "{}"}], queue="deliver.webhook")
"""


def test_every_shape_a_foreign_producer_sends_ends_delivered_or_dead_lettered(
    worker_env: dict[str, str], receiver: WebhookReceiver, redis_client: redis.Redis
) -> None:
    worker = start_worker(worker_env)
    try:
        run_python(SEND, worker_env)
        delivered = ["ses_fx1", "ses_fx2", "ses_fx4", "ses_fx5"]
        assert receiver.wait_for(len(delivered), timeout=30, distinct=True), worker.output
        assert wait_until(lambda: len(dead_letters(redis_client)) >= 8, 20), (
            dead_letters(redis_client),
            worker.output,
        )
    finally:
        worker.stop()

    assert sorted({d.session_id for d in receiver.deliveries()}) == delivered
    letters = dead_letters(redis_client)
    reasons = sorted(
        (key.split("|", 1)[1][:20], letter["reason"]) for key, letter in letters.items()
    )
    by_id = dict(reasons)
    assert by_id["123"] == "invalid_id"
    assert by_id["../etc/passwd"] == "invalid_id"
    assert by_id["ses_fx3"] == "invalid_trigger"
    assert by_id["ses_fx6"] == "invalid_message"
    messages = [reason for sid, reason in reasons if sid.startswith("(message")]
    assert messages == ["invalid_message"] * 4  # no id; an item without one; junk; not a list
    assert "raised unexpected" not in worker.output  # no task FAILURE
    assert "unknown keyword(s) ignored: source" in worker.output
    # deliver with a list as the destination's name was dead-lettered, not retried for ever.
    assert not any(k.startswith(b"retries|") for k in redis_client.hkeys("ffe:metrics"))

    schema = json.loads(PUBLISHED.read_text())
    for delivery in receiver.deliveries():
        payload = delivery.payload
        jsonschema.validate(payload, schema)
        if delivery.session_id == "ses_fx4":
            trigger = payload["data"]["trigger"]
            assert trigger["event_id"] == "evt_fx4"
            assert "colour" not in trigger
            assert trigger["created_at"] is None
