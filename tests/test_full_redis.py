"""A Redis pushed past ``maxmemory`` (``noeviction``) refuses writes; the worker outlives it.

The test's own Redis has a 4 MB ceiling. While sessions are in flight the test fills it, so
every write the worker makes (delivery records, metrics, retries, kombu's bookkeeping) is
refused with OOM for a while; then it frees the memory. The worker must still be running and
every session must end delivered or dead-lettered.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.processes import broker_state, dead_letters, run_cli, settled, start_worker, wait_until
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import WebhookReceiver
from workshop.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration

# A running worker's connections and queued payloads take ~1.6 MB of it on their own.
MAXMEMORY = 4 * 1024 * 1024


@pytest.fixture
def small_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of the test's own that refuses writes past 4 MB."""
    with EmbeddedRedis(maxmemory=str(MAXMEMORY)) as server:
        yield server


def fill(client: redis.Redis, maxmemory: int = MAXMEMORY) -> int:
    """Write 64 KiB keys until Redis refuses one, then keep it past maxmemory; how many keys.

    Redis counts client buffers in its used memory, and they shrink a moment after a refused
    write: used memory can slip back under the ceiling by a few KiB. Lowering the ceiling to
    just under what the data now takes keeps Redis full until ``free``.
    """
    chunk = b"x" * 65536
    for n in range(10 * maxmemory // len(chunk)):
        try:
            client.set(f"test:filler:{n}", chunk)
        except redis.exceptions.OutOfMemoryError:
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", min(maxmemory, used - 128 * 1024))
            return n
    raise AssertionError("Redis took ten times its maxmemory")


def free(client: redis.Redis, keys: int, maxmemory: int = MAXMEMORY) -> None:
    """Delete the filler (DEL is allowed when Redis is full) and restore the ceiling."""
    client.delete(*(f"test:filler:{n}" for n in range(keys)))
    client.config_set("maxmemory", maxmemory)


def test_a_full_redis_does_not_kill_the_worker(
    worker_env: dict[str, str],
    small_redis: EmbeddedRedis,
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
) -> None:
    env = {
        **worker_env,
        "REDIS_URL": small_redis.url,
        "FUNNELFOX_TIMEOUT_S": "10",
        "RETRY_MAX_ATTEMPTS": "50",
        "RETRY_BACKOFF_MAX_S": "0.5",
    }
    delivered = [f"ses_full{i:02d}-slow2000x1" for i in range(30)]
    dead = ["ses_fulldead-slow2000x1-s404"]
    done = run_cli(["enqueue", "-"], env, stdin="\n".join(delivered + dead) + "\n")
    assert done.returncode == 0, done.stderr
    client = redis.Redis.from_url(small_redis.url)
    worker = start_worker(env)
    try:
        assert wait_until(lambda: simulator.in_flight > 0, 30), worker.output
        filler = fill(client)
        # Every fetch in progress comes back while Redis refuses writes.
        assert wait_until(lambda: simulator.in_flight == 0, 30), worker.output
        # The main process meets the full Redis (a task cannot queue its retry, a message
        # cannot be recorded): without the guard this is where the worker died.
        assert wait_until(
            lambda: "Redis is full" in worker.output or worker.popen.poll() is not None, 30
        ), worker.output
        assert worker.popen.poll() is None, worker.output
        free(client, filler)
        assert wait_until(lambda: settled(receiver, client, delivered, dead), 90), (
            f"used_memory {client.info('memory')['used_memory']} of {MAXMEMORY}; "
            + broker_state(client, receiver, delivered)
            + worker.output
        )
        assert worker.popen.poll() is None, worker.output
    finally:
        status = worker.stop()
    assert status == 0, worker.output
    assert "Unrecoverable error" not in worker.output
    assert {d.session_id for d in receiver.deliveries()} == set(delivered)
    assert dead_letters(client)["fetch|" + dead[0]]["reason"] == "not_found"
    client.close()
