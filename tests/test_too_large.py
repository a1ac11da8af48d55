"""A session body over FUNNELFOX_MAX_BODY_BYTES is dead-lettered too_large, never carried on."""

from __future__ import annotations

import pytest
import redis

from tests.processes import dead_letters, run_cli, settled, start_worker, wait_until
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import WebhookReceiver

pytestmark = pytest.mark.integration


def test_a_body_over_the_limit_is_dead_lettered_at_once(
    worker_env: dict[str, str],
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    env = {**worker_env, "FUNNELFOX_MAX_BODY_BYTES": "65536"}
    delivered = ["ses_tlplain", "ses_tlsmall-big32"]
    dead = ["ses_tlbig-big128", "ses_tlchunked-bigchunked128"]
    done = run_cli(["enqueue", *delivered, *dead], env)
    assert done.returncode == 0, done.stderr
    worker = start_worker(env)
    try:
        assert wait_until(lambda: settled(receiver, redis_client, delivered, dead), 60), (
            worker.output
        )
    finally:
        worker.stop()
    letters = dead_letters(redis_client)
    for session_id in dead:
        letter = letters[f"fetch|{session_id}"]
        assert (letter["reason"], letter["attempts"]) == ("too_large", 1)
        assert "FUNNELFOX_MAX_BODY_BYTES" in letter["error"]
        assert len(simulator.requests_for(session_id)) == 1, "never retried"
    assert {d.session_id for d in receiver.deliveries()} == set(delivered)
    # Nothing of the large bodies went on: no delivery message, no stream entry carries them.
    assert redis_client.xlen("test:enriched") == len(delivered)
