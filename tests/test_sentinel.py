"""Redis with a standby: every client follows the Sentinels' primary; acknowledgements wait for it.

Each test runs its own primary, replica and three Sentinels (workshop.sentinel), which
replace a killed primary within about three seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import httpx
import pytest
import redis
from conftest import FOX_SECRET
from processes import run_cli
from pydantic import SecretStr
from test_ingress import AUTH, WEBHOOK, LiveServer, event, queued_ids

from config.ingress import IngressConfig
from worker.ingress.service import create_app
from worker.producer import Producer
from worker.redis_clients import (
    PrimaryChanged,
    async_client,
    async_fail_fast_client,
    primary_id,
    primary_id_sync,
    require_reachable,
    sync_client,
    wait_for_replicas,
    wait_for_replicas_sync,
)
from worker.work import Work
from workshop.sentinel import SentinelCluster, wait_for

pytestmark = [pytest.mark.sentinel]


def until_it_works(call: Callable[[], object], timeout_s: float = 20) -> float:
    """Call ``call()`` until it returns without a Redis or broker error; how long that took."""
    started = time.monotonic()
    while True:
        try:
            call()
            return time.monotonic() - started
        except (redis.RedisError, OSError) as exc:
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"still failing after {timeout_s} s: {exc!r}") from None
            time.sleep(0.05)


@pytest.mark.integration
def test_every_client_follows_a_failover(sentinel_cluster: SentinelCluster) -> None:
    url = sentinel_cluster.url(db=2)
    require_reachable(url)
    blocking = sync_client(url, timeout_s=1, connect_timeout_s=1)
    producer = Producer.connect(url, timeout_s=0.5)
    blocking.set("before", 1)
    producer.publish_many([Work("ses_before")])
    loop = asyncio.new_event_loop()
    pooled = async_client(url, timeout_s=1, connect_timeout_s=1)
    fail_fast = async_fail_fast_client(url, 0.5)
    try:
        for client in (pooled, fail_fast):
            assert loop.run_until_complete(client.incr("async")) > 0

        old = sentinel_cluster.kill_primary()
        new = sentinel_cluster.wait_for_new_primary(old)

        until_it_works(lambda: blocking.set("after", 1))
        until_it_works(lambda: producer.publish_many([Work("ses_after")]))
        for client in (pooled, fail_fast):
            until_it_works(lambda c=client: loop.run_until_complete(c.incr("async")))
        require_reachable(url)
    finally:
        for client in (pooled, fail_fast):
            loop.run_until_complete(client.aclose())
        loop.close()
        producer.close()
        blocking.close()
    # Everything after the failover is on the new primary, in the URL's database.
    direct = redis.Redis(port=new.port, db=2)
    assert direct.get("before") == b"1"
    assert direct.get("after") == b"1"
    assert int(direct.get("async") or 0) >= 4
    assert queued_ids(direct) == ["ses_before", "ses_after"]
    direct.close()


def test_wait_for_replicas_counts_those_that_have_every_write(
    sentinel_cluster: SentinelCluster,
) -> None:
    url = sentinel_cluster.url()
    client = sync_client(url)
    replica = sentinel_cluster.data[1]
    try:
        primary = primary_id_sync(client)
        client.rpush("list", "a")
        assert wait_for_replicas_sync(client, 1, 1, primary=primary) == 1
        replica.kill()
        client.rpush("list", "b")
        started = time.monotonic()
        assert wait_for_replicas_sync(client, 1, 0.2, primary=primary) == 0
        assert time.monotonic() - started < 1
    finally:
        client.close()

    async def on_asyncio() -> int:
        pooled = async_client(url)
        try:
            return await wait_for_replicas(pooled, 1, 0.1, primary=await primary_id(pooled))
        finally:
            await pooled.aclose()

    assert asyncio.run(on_asyncio()) == 0


@pytest.mark.integration
def test_a_wait_after_a_failover_does_not_vouch_for_writes_made_before_it(
    sentinel_cluster: SentinelCluster,
) -> None:
    client = sync_client(sentinel_cluster.url())
    try:
        before = primary_id_sync(client)
        client.rpush("list", "written to the old primary")
        old = sentinel_cluster.kill_primary()
        sentinel_cluster.wait_for_new_primary(old)
        old.start()  # back as a replica of the new primary: WAIT alone would count it
        assert until_replicated(client)
        with pytest.raises(PrimaryChanged):
            wait_for_replicas_sync(client, 1, 1, primary=before)
    finally:
        client.close()


def test_the_ingress_acknowledges_only_what_a_replica_holds(
    sentinel_cluster: SentinelCluster,
) -> None:
    config = IngressConfig(
        secret=SecretStr(FOX_SECRET),
        redis_url=sentinel_cluster.url(),
        broker_timeout_s=0.5,
        wait_replicas=1,
        wait_timeout_s=0.2,
    )
    primary = redis.Redis(port=sentinel_cluster.primary_port())
    replica = sentinel_cluster.data[1]
    with LiveServer(create_app(config)) as server, httpx.Client(base_url=server.url) as http:
        first = http.post(WEBHOOK, json=event(id="evt_a", session_id="ses_a"), headers=AUTH)
        assert first.status_code == 202, first.text

        replica.kill()
        late = event(id="evt_b", session_id="ses_b")
        refused = http.post(WEBHOOK, json=late, headers=AUTH)
        assert refused.status_code == 503
        assert refused.json()["error"] == "not_replicated"
        assert refused.headers["Retry-After"]
        # Queued on the primary all the same: FunnelFox's retry must not queue it twice.
        assert queued_ids(primary) == ["ses_a", "ses_b"]
        assert http.post(WEBHOOK, json=late, headers=AUTH).status_code == 503

        replica.start()
        assert until_replicated(primary)
        again = http.post(WEBHOOK, json=late, headers=AUTH)
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "duplicate"
        assert queued_ids(primary) == ["ses_a", "ses_b"]
    primary.close()


def until_replicated(primary: redis.Redis, timeout_s: float = 20) -> bool:
    """Wait until a replica is back in sync with the primary."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if wait_for_replicas_sync(primary, 1, 0.1, primary=primary_id_sync(primary)) == 1:
                return True
        time.sleep(0.05)
    return False


@pytest.mark.integration
def test_enqueue_exits_0_only_once_a_replica_holds_the_ids(
    sentinel_cluster: SentinelCluster, worker_env: dict[str, str]
) -> None:
    env = {
        **worker_env,
        "REDIS_URL": sentinel_cluster.url(),
        "REDIS_WAIT_REPLICAS": "1",
        "REDIS_WAIT_TIMEOUT_S": "0.3",
    }
    done = run_cli(["enqueue", "ses_one"], env)
    assert done.returncode == 0, done.stderr

    sentinel_cluster.data[1].kill()
    done = run_cli(["enqueue", "ses_two"], env)
    assert done.returncode == 1
    assert "not confirmed on REDIS_WAIT_REPLICAS=1 replica(s)" in done.stderr
    assert "0 of 1 replica(s)" in done.stderr
    primary = redis.Redis(port=sentinel_cluster.primary_port())
    assert primary.llen("enrich") == 2
    primary.close()


def test_a_sentinel_url_that_answers_nowhere_is_one_line_without_its_password() -> None:
    from config import ConfigError
    from workshop.redis_server import free_port

    url = f"sentinel://:hunter2-pw@127.0.0.1:{free_port()}/0?master=ffe&sentinel_password=s3-pw"
    with pytest.raises(ConfigError) as caught:
        require_reachable(url, timeout_s=0.5)
    message = str(caught.value)
    assert message.startswith("REDIS_URL: no Redis answers there (")
    assert "No master found for 'ffe'" in message
    assert "hunter2" not in message
    assert "s3-pw" not in message
    assert "\n" not in message


@pytest.mark.parametrize("persistent", [True, False], ids=["append-only", "memory-only"])
def test_a_second_failover_soon_after_a_restart_keeps_the_data_only_if_persistent(
    persistent: bool,
) -> None:
    """Why the failover test's nodes keep an append-only file: a killed memory-only primary
    that a supervisor restarts comes back empty, and if the Sentinels fail over again before
    it has synced (here: the new primary hangs), they promote it, and the node that kept
    everything resyncs from it: every key is gone."""
    with SentinelCluster(persistent=persistent) as cluster:
        with cluster.primary().client() as client:
            client.mset({f"key{n}": n for n in range(100)})
            assert client.wait(1, 1000) == 1
        old = cluster.kill_primary()
        new = cluster.wait_for_new_primary(old)
        old.start()  # as its supervisor would
        new.pause()  # before the Sentinels have made the restarted node its replica
        try:
            wait_for(lambda: cluster.primary_port() == old.port, 30, cluster.logs)
        finally:
            new.resume()

        def resynced() -> bool:
            with new.client() as client:
                info = client.info("replication")
            return bool(info["role"] == "slave" and info["master_link_status"] == "up")

        wait_for(resynced, 30, cluster.logs)
        assert cluster.failovers() == 2
        for node in (old, new):
            with node.client() as client:
                assert client.dbsize() == (100 if persistent else 0)
