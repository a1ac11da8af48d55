"""Enrichments kept for a while after they are built, so a session's conversions reuse them.

    ffe:enriched:<session id>    the session's body and enrichment (``encode``), for
                                 ENRICHMENT_CACHE_TTL_S after the run that built them

Written when a session started by a FunnelFox event (its completion) or a conversion is
enriched; read by conversions, which then need no request to FunnelFox. Sessions enqueued by
the console or a backfill are not kept: no conversion is expected to follow them soon.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import redis.asyncio as aioredis

from worker.keys import enriched_key
from worker.payload import Enriched

# zlib's fastest level: a simulated session's entry takes ~1.4 kB of Redis memory instead of
# ~2.6 kB, for ~60 µs to write and ~25 µs to read (measured on 2 loaded cores; README,
# "Conversion events").
_LEVEL = 1


def encode(entry: Enriched) -> bytes:
    """The enrichment JSON, a newline, the session body; compressed.

    orjson never writes a raw newline, so the first one ends the enrichment.
    """
    return zlib.compress(entry.enrichment + b"\n" + entry.session, _LEVEL)


def decode(value: bytes) -> Enriched | None:
    """What ``encode`` wrote; None for anything else (then the session is fetched)."""
    try:
        enrichment, _, session = zlib.decompress(value).partition(b"\n")
    except zlib.error:
        return None
    return Enriched(session=session, enrichment=enrichment) if session else None


class EnrichmentCache:
    """Built enrichments by session id, in the state Redis, each for ``ttl_s``."""

    def __init__(self, client: aioredis.Redis, *, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s

    async def get_many(self, session_ids: Sequence[str]) -> list[Enriched | None]:
        """Each session's kept enrichment, or None (one round trip)."""
        if not session_ids:
            return []
        found = await self._redis.mget([enriched_key(sid) for sid in session_ids])
        return [decode(value) if isinstance(value, bytes) else None for value in found]

    async def put_many(self, entries: Sequence[tuple[str, Enriched]]) -> None:
        """Keep these (one round trip); a session kept again starts its time again."""
        if not entries:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id, entry in entries:
                pipe.set(enriched_key(session_id), encode(entry), ex=self._ttl_s)
            await pipe.execute()
