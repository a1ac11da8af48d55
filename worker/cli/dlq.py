"""Dead-letter operations behind ``python -m worker dlq``: list, replay, purge.

A replay re-runs the stage that failed: a failed fetch or validation fetches again, a failed
delivery re-sends the payload that was built (same ``webhook-id``). A session that has no dead
letter is replayed in full: its delivery records are dropped, so it is delivered again. A
conversion without a dead letter cannot be: its event is not kept once it is delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import redis.asyncio as aioredis

from worker.conversions import Conversion
from worker.deadletters import DeadLetter, DeadLetters
from worker.fleet import registered_sinks_async
from worker.keys import ledger_key
from worker.producer import Producer
from worker.redis_clients import async_client
from worker.state import DeliveryState
from worker.work import Work

T = TypeVar("T")
# Records compared and deleted per Redis call after their messages are queued.
REMOVE_CHUNK = 500


@dataclass
class Replay:
    """What to send again: fetches, deliveries per sink, and the records to drop after."""

    fetches: list[Work] = field(default_factory=list)
    deliveries: dict[str, list[Work]] = field(default_factory=dict)
    letters: list[DeadLetter] = field(default_factory=list)
    redelivered: list[str] = field(default_factory=list)
    # Conversions named without a dead letter: their event is not kept once delivered.
    not_replayable: list[str] = field(default_factory=list)


async def plan_replay(redis: aioredis.Redis, session_ids: Sequence[str]) -> Replay:
    """Decide what a replay sends; with no ids, every dead letter."""
    store = DeadLetters(redis)
    letters = await store.select(session_ids)
    plan = Replay(letters=letters)
    for letter in letters:
        payload = await store.payload(letter) if letter.stage.startswith("deliver:") else None
        event = None if letter.event is None else Conversion.from_message(letter.event)
        work = Work(letter.session_id, 0, letter.first_seen_at, letter.trigger, payload, event)
        if payload is not None:
            plan.deliveries.setdefault(letter.stage.removeprefix("deliver:"), []).append(work)
        else:
            plan.fetches.append(work)
    # Ids named without a dead letter: the explicit way to deliver a session again.
    dead_ids = {letter.session_id for letter in letters}
    named = [sid for sid in dict.fromkeys(session_ids) if sid not in dead_ids]
    conversions = await _conversions(redis, named)
    plan.not_replayable = [sid for sid in named if sid in conversions]
    plan.redelivered = [sid for sid in named if sid not in conversions]
    if plan.redelivered:
        state = DeliveryState(redis, dedupe_ttl_s=1, claim_ttl_s=1)
        for sink in await registered_sinks_async(redis):
            await state.forget(sink, plan.redelivered)
        plan.fetches += [Work(sid) for sid in plan.redelivered]
    return plan


async def _conversions(redis: aioredis.Redis, ids: Sequence[str]) -> set[str]:
    """Those of ``ids`` the ledger knows as conversions (their entry names the event type)."""
    if not ids:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        for unit_id in ids:
            pipe.hexists(ledger_key(unit_id), "k")
        found = await pipe.execute()
    return {unit_id for unit_id, known in zip(ids, found, strict=True) if known}


def chunked(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size``."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


async def _with_redis(redis_url: str, use: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    redis = async_client(redis_url)
    try:
        return await use(redis)
    finally:
        await redis.aclose()


def replay(
    redis_url: str, session_ids: Sequence[str], producer: Producer, *, batch_size: int
) -> Replay:
    """Plan, send in batches, then drop each replayed record if it is still the one read.

    Messages carry at most ``batch_size`` sessions, like the worker's own, so a replay of any
    size is tasks a worker finishes within its time limit. A record is dropped only once its
    message is queued, and only if unchanged: a session that failed again meanwhile keeps
    its new record.
    """

    async def run(redis: aioredis.Redis) -> Replay:
        plan = await plan_replay(redis, session_ids)
        with producer.session():
            for chunk in chunked(plan.fetches, batch_size):
                producer.send_fetches(chunk, accept="replay")
            for sink, works in plan.deliveries.items():
                for chunk in chunked(works, batch_size):
                    producer.send_deliveries(sink, chunk, accept="replay")
        store = DeadLetters(redis)
        for letters in chunked(plan.letters, REMOVE_CHUNK):
            await store.remove_unchanged(letters)
        return plan

    return asyncio.run(_with_redis(redis_url, run))


def purge(redis_url: str, session_ids: Sequence[str]) -> int:
    """Delete the dead letters of these sessions (all of them with no ids)."""

    async def run(redis: aioredis.Redis) -> int:
        store = DeadLetters(redis)
        return await store.remove(await store.select(session_ids))

    return asyncio.run(_with_redis(redis_url, run))


def list_letters(redis_url: str, reason: str | None = None) -> list[DeadLetter]:
    """Every dead letter, optionally of one reason."""

    async def run(redis: aioredis.Redis) -> list[DeadLetter]:
        letters = await DeadLetters(redis).select(())
        return [letter for letter in letters if reason is None or letter.reason == reason]

    return asyncio.run(_with_redis(redis_url, run))
