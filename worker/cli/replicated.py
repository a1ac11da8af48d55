"""The console's exit 0 promises that what it queued is safe: with REDIS_WAIT_REPLICAS, on a
standby too, so a failover to it cannot lose the work that was reported done."""

from __future__ import annotations

from typing import TextIO

from redis.exceptions import RedisError

from config import Settings
from worker.redis_clients import describe, sync_client, wait_for_replicas_sync


def confirm_replicated(settings: Settings, err: TextIO) -> bool:
    """True once REDIS_WAIT_REPLICAS replicas hold every write so far (at once when it is 0);
    else says so on ``err``."""
    wanted = settings.redis_wait_replicas
    if not wanted:
        return True
    timeout_s = settings.redis_wait_timeout_s
    client = sync_client(settings.redis_url, timeout_s=timeout_s + 5)
    try:
        got = wait_for_replicas_sync(client, wanted, timeout_s)
        problem = f"{got} of {wanted} replica(s) confirmed within {timeout_s:g} s"
    except RedisError as exc:
        got, problem = 0, describe(exc, settings.redis_url)
    finally:
        client.close()
    if got >= wanted:
        return True
    print(
        f"not confirmed on REDIS_WAIT_REPLICAS={wanted} replica(s) ({problem}): a failover "
        "now could lose it; run the same command again (delivered sessions are skipped)",
        file=err,
    )
    return False
