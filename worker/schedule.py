"""Retries that wait in Redis, not in the broker, and the reconciler that finds lost sessions.

Both run in every worker's main process, on Celery's own timer (``worker.app``): no extra
process and no leader.

- **Due retries**: a failed attempt is written to ``ffe:due`` (by due time) with the task item
  it will carry. Every worker takes what is due with one atomic script, so two workers never
  both publish the same retry. Any delay is allowed: nothing is held by a worker meanwhile.
- **The reconciler**: a session neither finished nor scheduled that made no progress for
  RECONCILE_AFTER_S, and whose message is no longer in its queue, is published again. A crash
  between taking a message and recording it, a dropped connection, a message deleted by hand:
  whatever lost the message, the ledger still knows the session. Publishing a session that was
  not lost after all is harmless: delivery records, claims and stable webhook-ids make sure
  each destination still gets it once.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import redis

from worker.keys import (
    DUE,
    DUE_WORK,
    FETCH_QUEUE,
    LEDGER_IDLE,
    QUEUED_AT_HEADER,
    RECONCILE_LOCK,
    delivery_queue,
    due_member,
    ledger_key,
    ledger_trigger_key,
)
from worker.ledger import LedgerWriter
from worker.redis_clients import text
from worker.work import Work

log = logging.getLogger("worker.schedule")

# Take up to ARGV[2] retries due by ARGV[1]: {member, item, member, item, ...}.
_TAKE_DUE = """
local members = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, member in ipairs(members) do
    local item = redis.call('hget', KEYS[2], member)
    redis.call('zrem', KEYS[1], member)
    redis.call('hdel', KEYS[2], member)
    if item then
        table.insert(out, member)
        table.insert(out, item)
    end
end
return out
"""

# Release the reconcile lock only if it is still ours.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

SendFetches = Callable[[Sequence[Work]], None]
SendDeliveries = Callable[[str, Sequence[Work]], None]


def due_item(work: Work) -> bytes:
    """What ``ffe:due:work`` keeps for one retry: the task item it will carry."""
    return orjson.dumps(work.to_message())


class DueRetries:
    """Takes due retries and publishes them, in messages of at most ``batch_size``."""

    def __init__(self, client: redis.Redis, *, batch_size: int) -> None:
        self._redis = client
        self._batch_size = batch_size
        self._take = client.register_script(_TAKE_DUE)

    def publish_due(
        self,
        send_fetches: SendFetches,
        send_deliveries: SendDeliveries,
        *,
        now: float | None = None,
        limit: int = 1000,
    ) -> int:
        """Publish every retry due by ``now`` (at most ``limit``); how many."""
        reply = self._take([DUE, DUE_WORK], [time.time() if now is None else now, limit])
        fetches: list[Work] = []
        deliveries: dict[str, list[Work]] = {}
        for member, item in zip(reply[::2], reply[1::2], strict=True):
            stage = text(member).split("|", 1)[0]
            work = Work.from_message(orjson.loads(item))
            if stage == "fetch":
                fetches.append(work)
            else:
                deliveries.setdefault(stage.removeprefix("deliver:"), []).append(work)
        # A crash from here to the publish loses these messages, not the sessions: their
        # ledger entries still expect progress, and the reconciler publishes them again.
        for chunk in _chunks(fetches, self._batch_size):
            send_fetches(chunk)
        for sink, works in deliveries.items():
            for chunk in _chunks(works, self._batch_size):
                send_deliveries(sink, chunk)
        return len(reply) // 2


@dataclass(frozen=True)
class Candidate:
    """An unfinished unit (a session or a conversion) whose progress is overdue."""

    session_id: str
    expected_by: float
    entry: dict[str, str]
    trigger: bytes | None = None

    def queues(self) -> list[str]:
        """The queues its next message waits in."""
        found = []
        if self.entry.get("f") in ("q", "r"):
            found.append(FETCH_QUEUE)
        for name, state in self.entry.items():
            if name.startswith("d:") and state in ("q", "r"):
                found.append(delivery_queue(name.removeprefix("d:")))
        return found

    def stages(self) -> list[str]:
        """The stages whose retry may be scheduled."""
        found = ["fetch"] if self.entry.get("f") == "r" else []
        found += [
            f"deliver:{name.removeprefix('d:')}"
            for name, state in self.entry.items()
            if name.startswith("d:") and state == "r"
        ]
        return found

    def work(self) -> Work:
        """The fetch to publish again: the whole unit (a session, or a conversion with its
        event, from the trigger key), which delivers what is missing."""
        return Work.from_context(
            self.session_id,
            float(self.entry.get("a") or time.time()),
            orjson.loads(self.trigger) if self.trigger else None,
        )


class Reconciler:
    """Publishes again the sessions whose messages were lost; one worker at a time."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        after_s: float,
        batch_size: int,
        lock_ttl_s: float,
        ledger_ttl_s: int = 7 * 24 * 3600,
        margin_s: float = 1.0,
    ) -> None:
        self._redis = client
        self._after_s = after_s
        self._batch_size = batch_size
        self._lock_ttl_ms = max(1000, int(lock_ttl_s * 1000))
        self._margin_s = margin_s
        self._token = secrets.token_hex(8)
        self._release = client.register_script(_RELEASE)
        self._ledger = LedgerWriter(client, ttl_s=ledger_ttl_s)

    def run_once(self, send_fetches: SendFetches, *, now: float | None = None) -> list[str]:
        """One pass: the ids published again (none if another worker holds the lock)."""
        started = time.time() if now is None else now
        if not self._redis.set(RECONCILE_LOCK, self._token, nx=True, px=self._lock_ttl_ms):
            return []
        try:
            lost = self._lost(started)
            for chunk in _chunks([c.work() for c in lost], self._batch_size):
                send_fetches(chunk)
            # Expected again from after the publish, not before it: the new messages' own
            # queued-at times must not make these look lost at the next pass.
            self._touch(lost, time.time() if now is None else now)
            return [c.session_id for c in lost]
        finally:
            self._release([RECONCILE_LOCK], [self._token])

    def _lost(self, now: float, limit: int = 500) -> list[Candidate]:
        overdue: list[tuple[bytes, float]] = self._redis.zrangebyscore(  # type: ignore[assignment]
            LEDGER_IDLE, "-inf", now - self._after_s, start=0, num=limit, withscores=True
        )
        if not overdue:
            return []
        with self._redis.pipeline(transaction=False) as pipe:
            for member, _ in overdue:
                pipe.hgetall(ledger_key(text(member)))
                pipe.get(ledger_trigger_key(text(member)))
            replies = pipe.execute()
        candidates = [
            Candidate(
                text(member),
                float(score),
                {text(k): text(v) for k, v in entry.items()},
                trigger,
            )
            for (member, score), entry, trigger in zip(
                overdue, replies[::2], replies[1::2], strict=True
            )
            if entry
        ]
        scheduled = self._scheduled(candidates)
        watermarks: dict[str, float] = {}
        lost = []
        for candidate in candidates:
            if candidate.session_id in scheduled:
                continue
            queues = candidate.queues()
            for queue in queues:
                if queue not in watermarks:
                    watermarks[queue] = self._watermark(queue, now)
            # Published before the oldest message still waiting in its queue: its message
            # left the queue long ago (queues are first in, first out), and no stage
            # recorded it since.
            if all(candidate.expected_by < watermarks[q] - self._margin_s for q in queues):
                lost.append(candidate)
        return lost

    def _scheduled(self, candidates: Sequence[Candidate]) -> set[str]:
        """Those with a retry waiting in the due index."""
        pairs = [(c.session_id, stage) for c in candidates for stage in c.stages()]
        if not pairs:
            return set()
        with self._redis.pipeline(transaction=False) as pipe:
            for session_id, stage in pairs:
                pipe.zscore(DUE, due_member(stage, session_id))
            scores = pipe.execute()
        return {sid for (sid, _), score in zip(pairs, scores, strict=True) if score is not None}

    def _watermark(self, queue: str, now: float) -> float:
        """When the oldest message still in ``queue`` was queued (now if it is empty)."""
        oldest = self._redis.lindex(queue, -1)  # kombu pushes left and takes from the right
        if oldest is None:
            return now
        try:
            headers = orjson.loads(oldest).get("headers") or {}
            return float(headers[QUEUED_AT_HEADER])
        except (ValueError, KeyError, TypeError, AttributeError):
            return 0.0  # a foreign producer's message: no telling, so nothing is lost yet

    def _touch(self, lost: Sequence[Candidate], now: float) -> None:
        if not lost:
            return
        self._ledger.touch([c.session_id for c in lost], "reconcile", "published", now)
        log.warning(
            "reconciled: published again %d session(s) whose messages were lost",
            len(lost),
            extra={"outcome": "reconciled"},
        )


def _chunks(items: Sequence[Work], size: int) -> list[list[Work]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
