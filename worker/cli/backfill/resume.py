"""Where a backfill stands, saved in Redis after every finished page so a rerun resumes there.

    ffe:backfill:<digest of the filter>   {"cursor": ..., "done": n, "filter": {...}}

``cursor`` is the page being worked on (None: the first) and ``done`` how many of its items
are already handled; the record lives DEDUPE_TTL_S, as long as the delivery records that would
otherwise skip what was enqueued.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from worker.keys import backfill_key


@dataclass(frozen=True)
class Position:
    """A page (by the cursor that fetches it) and how many of its items are done."""

    cursor: str | None
    done: int = 0


def position_key(identity: dict[str, Any]) -> str:
    """The key of one filter's position: the same arguments always give the same key."""
    digest = hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return backfill_key(digest[:32])


class PositionStore:
    """Load, save and clear one backfill's position."""

    def __init__(self, client: redis.Redis, identity: dict[str, Any], *, ttl_s: int) -> None:
        self._redis = client
        self._identity = identity
        self.key = position_key(identity)
        self._ttl_s = ttl_s

    def load(self) -> Position | None:
        """The saved position, or None if there is none (or it is unreadable)."""
        raw = self._redis.get(self.key)
        if raw is None:
            return None
        try:
            record = orjson.loads(raw)
            cursor, done = record["cursor"], int(record["done"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if cursor is not None and not isinstance(cursor, str):
            return None
        return Position(cursor, max(0, done))

    def save(self, position: Position) -> None:
        """Remember ``position`` for the next run with the same filter."""
        record = {"cursor": position.cursor, "done": position.done, "filter": self._identity}
        self._redis.set(self.key, orjson.dumps(record), ex=self._ttl_s)

    def clear(self) -> None:
        """Forget the position: the backfill finished."""
        self._redis.delete(self.key)
