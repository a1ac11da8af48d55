"""The dead-letter store: every unit of work that will not be delivered, with the reason why.

One Redis hash (``ffe:dlq``) of JSON records keyed ``<stage>|<unit id>`` (a session id, or a
conversion's event id), so a session that failed at two sinks has two records; payloads built
before a failed delivery are kept beside them (``ffe:dlq:payload``) so a replay re-sends them
without fetching again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from worker.keys import DEAD_LETTER_PAYLOADS as PAYLOADS_KEY
from worker.keys import DEAD_LETTERS as RECORDS_KEY

# For each (field, record) pair: delete the field (and its payload) if it still holds record.
_REMOVE_UNCHANGED = """
local removed = 0
for i = 1, #ARGV, 2 do
    if redis.call('hget', KEYS[1], ARGV[i]) == ARGV[i + 1] then
        redis.call('hdel', KEYS[1], ARGV[i])
        redis.call('hdel', KEYS[2], ARGV[i])
        removed = removed + 1
    end
end
return removed
"""


@dataclass(frozen=True)
class DeadLetter:
    """Why one unit stopped at one stage."""

    session_id: str  # the unit's id: a conversion's is its event id
    stage: str  # fetch, validate, deliver:<sink>
    reason: str  # short stable code: not_found, invalid_payload, gone, retries_exhausted …
    error: str
    attempts: int
    first_seen_at: float
    failed_at: float
    trigger: dict[str, Any] | None = None
    # A conversion's event (worker.conversions.Conversion.to_message), to replay it.
    event: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        """The record's field in the hash."""
        return record_key(self.stage, self.session_id)

    def to_json(self) -> bytes:
        """The record as one JSON object."""
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        """Read a record written by ``to_json``."""
        return cls(**orjson.loads(raw))


def record_key(stage: str, session_id: str) -> str:
    """The hash field of one session's record for one stage."""
    return f"{stage}|{session_id}"


class DeadLetters:
    """The dead-letter store, shared by every worker and the CLI."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def add(
        self, letters: Sequence[DeadLetter], payloads: Sequence[bytes | None] = ()
    ) -> None:
        """Store records (and the payloads of failed deliveries) in one round trip."""
        if not letters:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            records: dict[FieldT, EncodableT] = {letter.key: letter.to_json() for letter in letters}
            pipe.hset(RECORDS_KEY, mapping=records)
            kept: dict[FieldT, EncodableT] = {
                letter.key: payload
                for letter, payload in zip(letters, payloads, strict=False)
                if payload is not None
            }
            if kept:
                pipe.hset(PAYLOADS_KEY, mapping=kept)
            await pipe.execute()

    async def scan(self) -> AsyncIterator[DeadLetter]:
        """Every record, without loading the whole store at once."""
        async for _field, raw in self._redis.hscan_iter(RECORDS_KEY, count=500):
            yield DeadLetter.from_json(raw)

    async def find(self, session_ids: Iterable[str]) -> list[DeadLetter]:
        """The records of these sessions, at any stage."""
        wanted = set(session_ids)
        return [letter async for letter in self.scan() if letter.session_id in wanted]

    async def select(self, session_ids: Sequence[str]) -> list[DeadLetter]:
        """The records of these sessions; with no ids, every record."""
        if not session_ids:
            return [letter async for letter in self.scan()]
        return await self.find(session_ids)

    async def payload(self, letter: DeadLetter) -> bytes | None:
        """The payload kept for a failed delivery, if any."""
        value = await self._redis.hget(PAYLOADS_KEY, letter.key)
        return value if isinstance(value, bytes) else None

    async def remove_unchanged(self, letters: Sequence[DeadLetter]) -> int:
        """Delete these records only where they are still the ones read (and their payloads).

        A replayed session that fails again at once writes a new record under the same field;
        deleting by field alone would delete that new record too, and lose the session.
        """
        if not letters:
            return 0
        args: list[EncodableT] = []
        for letter in letters:
            args += [letter.key, letter.to_json()]
        removed = await self._redis.eval(_REMOVE_UNCHANGED, 2, RECORDS_KEY, PAYLOADS_KEY, *args)
        return int(removed)

    async def remove(self, letters: Sequence[DeadLetter]) -> int:
        """Delete records and their payloads; returns how many records went."""
        if not letters:
            return 0
        keys = [letter.key for letter in letters]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(RECORDS_KEY, *keys)
            pipe.hdel(PAYLOADS_KEY, *keys)
            removed, _ = await pipe.execute()
        return int(removed)

    async def count(self) -> int:
        """How many records the store holds."""
        return int(await self._redis.hlen(RECORDS_KEY))
