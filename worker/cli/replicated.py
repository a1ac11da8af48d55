"""The console's exit 0 promises that what it queued is safe: with REDIS_WAIT_REPLICAS, on a
standby too, so a failover to it cannot lose work that was reported done."""

from __future__ import annotations

from typing import TextIO

from redis.exceptions import RedisError

from config import Settings
from worker.redis_clients import describe, primary_id_sync, sync_client, wait_for_replicas_sync


class ReplicaCheck:
    """Opened before a command's first write, confirmed after its last."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = None
        self._primary = ""
        self._problem = ""
        if settings.redis_wait_replicas:
            self._client = sync_client(
                settings.redis_url, timeout_s=settings.redis_wait_timeout_s + 5
            )
            try:
                self._primary = primary_id_sync(self._client)
            except RedisError as exc:
                self._problem = describe(exc, settings.redis_url)

    def confirm(self, err: TextIO) -> bool:
        """True once REDIS_WAIT_REPLICAS replicas of the primary that took the writes hold
        them (at once when it is 0); else says so on ``err``."""
        wanted = self._settings.redis_wait_replicas
        if self._client is None:
            return True
        timeout_s = self._settings.redis_wait_timeout_s
        got = 0
        try:
            if not self._problem:
                got = wait_for_replicas_sync(self._client, wanted, timeout_s, primary=self._primary)
                self._problem = f"{got} of {wanted} replica(s) confirmed within {timeout_s:g} s"
        except RedisError as exc:
            self._problem = describe(exc, self._settings.redis_url)
        finally:
            self._client.close()
            self._client = None
        if got >= wanted:
            return True
        print(
            f"not confirmed on REDIS_WAIT_REPLICAS={wanted} replica(s) ({self._problem}): a "
            "failover now could lose it; run the same command again (delivered sessions are "
            "skipped)",
            file=err,
        )
        return False
