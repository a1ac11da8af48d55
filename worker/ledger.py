"""The session ledger: every unit of work the product accepted, and where it is now.

A unit is a session, or a conversion keyed by its event id (``worker.conversions``). One
Redis hash per unit (``ffe:ledger:<id>``, see ``worker.keys``), written by every entry point
when it accepts a unit and by the worker after each stage, atomically per unit (a Lua
script keeps its overall state and the per-state counts in step):

    a    accepted at (Unix seconds)         s    source (cli, ingress, backfill, replay, foreign)
    st   queued | in_progress | retrying | delivered | dead
    f    the fetch: q(ueued) r(etrying) d(one) x (dead)
    d:<destination>  the same four for each destination, once the session is fetched
    n    next attempt at, while retrying     u    last progress
    e    the FunnelFox event id, when there was one
    k    a conversion's event type          ss   a conversion's session id, when it has one
    l<k> the k-th attempt: ``stage,at,outcome[,detail][,duration]``; ``ln`` counts them and
         only the last LOG_MAX_ENTRIES are kept

Every value stays under 64 bytes, so Redis keeps the hash in its compact (listpack) encoding:
a finished session costs a few hundred bytes (README, "The session ledger"). The trigger, which
a reconciled session needs and is longer, waits in ``ffe:ledger:<id>:t`` until the session
finishes (a conversion's holds its event too). A session's conversions are listed in
``ffe:ledger:<session id>:c`` (the CONVERSIONS_LISTED newest event ids, by acceptance time).

Unfinished sessions are also in two sorted sets: ``open`` by acceptance time (the oldest
unfinished session's age) and ``idle`` by the time progress is next expected (the reconciler's
view). A finished entry leaves both and expires after LEDGER_TTL_S.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from worker import scripts
from worker.conversions import Conversion
from worker.keys import (
    DUE,
    DUE_WORK,
    LEDGER_COUNTS,
    LEDGER_IDLE,
    LEDGER_OPEN,
    due_member,
    ledger_conversions_key,
    ledger_key,
    ledger_trigger_key,
)
from worker.work import Work

UNFINISHED = ("queued", "in_progress", "retrying")
FINISHED = ("delivered", "dead")
STATES = (*UNFINISHED, *FINISHED)
LOG_MAX_ENTRIES = 40
CONVERSIONS_LISTED = 20

# Record acceptance: a new unit, or a finished one accepted again (reopened). An unfinished
# unit is left as it is, only touched. ARGV: 1 id, 2 now, 3 source, 4 context JSON or '',
# 5 event id or '', 6 a destination when one delivery is replayed, else '', 7 log entries kept,
# 8 a conversion's type or '', 9 its session id or '', 10 how long its session lists it,
# 11 how many conversions a session lists. KEYS[6]: that session's list of conversions.
# Returns its state before ('' when new).
_ACCEPT = """
local h = KEYS[1]
if ARGV[8] ~= '' then
    redis.call('hset', h, 'k', string.sub(ARGV[8], 1, 63))
    if ARGV[9] ~= '' then
        redis.call('hset', h, 'ss', string.sub(ARGV[9], 1, 63))
        redis.call('zadd', KEYS[6], ARGV[2], ARGV[1])
        redis.call('zremrangebyrank', KEYS[6], 0, -(tonumber(ARGV[11]) + 1))
        redis.call('expire', KEYS[6], ARGV[10])
    end
end
local old = redis.call('hget', h, 'st')
if old == 'queued' or old == 'in_progress' or old == 'retrying' then
    redis.call('hset', h, 'u', ARGV[2])
    redis.call('zadd', KEYS[3], ARGV[2], ARGV[1])
    return old
end
-- One HSET for the entry (a new one costs Redis five commands in all).
local n, keep = 1, tonumber(ARGV[7])
if old then
    local drops = {}
    for _, name in ipairs(redis.call('hkeys', h)) do
        if string.sub(name, 1, 2) == 'd:' or name == 'n' then drops[#drops + 1] = name end
    end
    n = (tonumber(redis.call('hget', h, 'ln')) or 0) + 1
    if n > keep then drops[#drops + 1] = 'l' .. (n - keep) end
    if #drops > 0 then redis.call('hdel', h, unpack(drops)) end
    redis.call('persist', h)
end
local st = 'queued'
local sets = {'a', ARGV[2], 's', ARGV[3], 'u', ARGV[2], 'f', 'q', 'ln', n,
    'l' .. n, string.sub('a,0,ok,' .. ARGV[3], 1, 63)}
if ARGV[6] ~= '' then
    -- a delivery replayed: fetched already, one destination to go
    st = 'in_progress'
    sets[8] = 'd'
    sets[#sets + 1] = 'd:' .. ARGV[6]
    sets[#sets + 1] = 'q'
end
sets[#sets + 1] = 'st'
sets[#sets + 1] = st
if ARGV[5] ~= '' then
    sets[#sets + 1] = 'e'
    sets[#sets + 1] = string.sub(ARGV[5], 1, 63)
end
redis.call('hset', h, unpack(sets))
if ARGV[4] ~= '' then redis.call('set', KEYS[5], ARGV[4]) end
redis.call('hincrby', KEYS[4], st, 1)
redis.call('zadd', KEYS[2], ARGV[2], ARGV[1])
redis.call('zadd', KEYS[3], ARGV[2], ARGV[1])
return old or ''
"""

# Record one stage's outcome for one session and derive its overall state. ARGV:
#   1 id, 2 now, 3 fields (f | d:<name>, comma-separated) or '', 4 their values, in order,
#   5 log entries (';'-separated) or '',
#   6 progress expected by (idle score) or '', 7 next attempt at or '',
#   8 destinations "name=q,name=d" or '', 9 ttl of a finished entry,
#   10 source if the session was never accepted, 11 its trigger JSON or '',
#   12 log entries kept (the oldest dropped first)
# Returns {state before, state after, accepted at}.
#
# The entry is read once (HGETALL), changed in a Lua table, and written back with one HSET and
# one HDEL; the writes every unit shares (the per-state counts, the open and idle sets) are
# gathered in ``acc`` and sent once per script call by ``flush``: a finishing session costs
# Redis five commands, not two dozen (README, "The session ledger").
_UPDATE_FN = """
local function new_acc(open, idle, counts)
    return {open = open, idle = idle, counts = counts, delta = {}, done = {}, waiting = {}}
end
local function count(acc, name, by) acc.delta[name] = (acc.delta[name] or 0) + by end
local function flush(acc)
    for name, by in pairs(acc.delta) do
        if by ~= 0 then redis.call('hincrby', acc.counts, name, by) end
    end
    -- In slices, as unpack spreads a bounded number of values. A unit waiting, then finished
    -- later in the same call, must end outside the idle set: the additions go first.
    for i = 1, #acc.waiting, 500 do
        redis.call('zadd', acc.idle, unpack(acc.waiting, i, math.min(i + 499, #acc.waiting)))
    end
    for i = 1, #acc.done, 500 do
        local last = math.min(i + 499, #acc.done)
        redis.call('zrem', acc.open, unpack(acc.done, i, last))
        redis.call('zrem', acc.idle, unpack(acc.done, i, last))
    end
end
local function update(KEYS, ARGV, acc)
    local h, now = KEYS[1], ARGV[2]
    local f = {}
    local all = redis.call('hgetall', h)
    for i = 1, #all, 2 do f[all[i]] = all[i + 1] end
    local old = f.st
    local sets, drops = {}, {}
    local function put(k, v) f[k] = v; sets[#sets + 1] = k; sets[#sets + 1] = v end
    local function drop(k) f[k] = nil; drops[#drops + 1] = k end
    local function append_all()
        if ARGV[5] == '' then return end
        -- "<stage>|<rest>" is stored as "<stage>,<ms since acceptance>,<rest>"
        local since = math.floor((tonumber(now) - tonumber(f.a or now)) * 1000)
        local n, keep = tonumber(f.ln) or 0, tonumber(ARGV[12])
        for entry in string.gmatch(ARGV[5], '[^;]+') do
            local stage, rest = string.match(entry, '^([^|]*)|(.*)$')
            n = n + 1
            put('l' .. n, string.sub(stage .. ',' .. since .. ',' .. rest, 1, 63))
            if n > keep then drops[#drops + 1] = 'l' .. (n - keep) end
        end
        put('ln', n)
    end
    local function write()
        if #sets > 0 then redis.call('hset', h, unpack(sets)) end
        if #drops > 0 then redis.call('hdel', h, unpack(drops)) end
    end
    if old == 'delivered' or old == 'dead' then
        append_all()
        write()
        return {old, old, f.a}
    end
    if not old then
        put('a', now); put('s', ARGV[10]); put('f', 'q')
        if ARGV[11] ~= '' then redis.call('set', KEYS[5], ARGV[11]) end
        redis.call('zadd', acc.open, now, ARGV[1])
    end
    -- The routed destinations first (never undoing a delivery), then the fields set, in order:
    -- a fetch recorded with its first delivery sets d:<name> after listing <name> as queued.
    if ARGV[8] ~= '' then
        for name, value in string.gmatch(ARGV[8], '([^=,]+)=([^,]+)') do
            if f['d:' .. name] ~= 'd' then put('d:' .. name, value) end
        end
    end
    if ARGV[3] ~= '' then
        local values = {}
        for value in string.gmatch(ARGV[4], '[^,]+') do values[#values + 1] = value end
        local i = 0
        for key in string.gmatch(ARGV[3], '[^,]+') do
            i = i + 1
            put(key, values[i])
        end
    end
    put('u', now)
    if ARGV[7] ~= '' then put('n', ARGV[7]) end
    append_all()
    local retrying, queued, dead = false, false, false
    for k, v in pairs(f) do
        if string.sub(k, 1, 2) == 'd:' then
            -- 's': filtered out of this destination, settled like a delivery
            if v == 'r' then retrying = true elseif v == 'q' then queued = true
            elseif v == 'x' then dead = true end
        end
    end
    local fetch, st = f.f, nil
    if fetch == 'x' then st = 'dead'
    elseif fetch == 'r' or retrying then st = 'retrying'
    elseif fetch == 'q' then st = 'queued'
    elseif queued then st = 'in_progress'
    elseif dead then st = 'dead'
    else st = 'delivered' end
    put('st', st)
    if old then count(acc, old, -1) end
    if st == 'delivered' or st == 'dead' then
        count(acc, 'finished:' .. st, 1)
        acc.done[#acc.done + 1] = ARGV[1]
        drop('n'); drop('u')
        write()
        redis.call('del', KEYS[5])
        redis.call('expire', h, ARGV[9])
    else
        if st ~= 'retrying' and f.n then drop('n') end
        write()
        count(acc, st, 1)
        local idle = ARGV[6]
        if idle == '' then idle = now end
        acc.waiting[#acc.waiting + 1] = idle
        acc.waiting[#acc.waiting + 1] = ARGV[1]
    end
    return {old or '', st, f.a}
end
"""

_UPDATE = (
    _UPDATE_FN
    + """
local acc = new_acc(KEYS[2], KEYS[3], KEYS[4])
local r = update(KEYS, ARGV, acc)
flush(acc)
return r
"""
)

# _UPDATE for many units in one call, one script call a batch instead of one per session. What
# every unit shares is sent once: KEYS open, idle, counts, then per unit its entry and trigger
# key; ARGV now, ttl, source, log entries kept, then per unit _UPDATE's ARGV 1, 3-8 and 11.
# Each unit appears once (Ledger.record merges a unit's events). Returns "before|after|accepted
# at" per unit (one reply each, cheaper to read than three).
_UPDATE_MANY = (
    _UPDATE_FN
    + """
local acc = new_acc(KEYS[1], KEYS[2], KEYS[3])
local out = {}
for i = 0, (#KEYS - 3) / 2 - 1 do
    local k, a = 3 + 2 * i, 4 + 8 * i
    local keys = {KEYS[k + 1], KEYS[1], KEYS[2], KEYS[3], KEYS[k + 2]}
    local args = {ARGV[a + 1], ARGV[1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5],
        ARGV[a + 6], ARGV[a + 7], ARGV[2], ARGV[3], ARGV[a + 8], ARGV[4]}
    local r = update(keys, args, acc)
    out[i + 1] = r[1] .. '|' .. r[2] .. '|' .. (r[3] or '')
end
flush(acc)
return out
"""
)


def _keys(unit_id: str, session_of: str | None = None) -> list[str]:
    """The scripts' keys; the sixth lists the conversions of ``session_of`` (a conversion's
    session), else of the unit itself (unused)."""
    return [
        ledger_key(unit_id),
        LEDGER_OPEN,
        LEDGER_IDLE,
        LEDGER_COUNTS,
        ledger_trigger_key(unit_id),
        ledger_conversions_key(session_of or unit_id),
    ]


def _clean(text: str) -> str:
    """A log field: no separators, bounded."""
    return text.replace(",", " ").replace(";", " ")[:60]


# Stages by a letter in the attempt log: a finished session is mostly its log.
STAGE_CODES = {
    "accepted": "a",
    "fetch": "f",
    "validate": "v",
    "enrich": "e",
    "reconcile": "r",
    "message": "m",
}
STAGE_NAMES = {code: name for name, code in STAGE_CODES.items()}


def log_entry(stage: str, outcome: str, detail: str = "", duration_s: float | None = None) -> str:
    """One attempt as the ledger script takes it; stored as
    ``<stage>,<ms since acceptance>,<outcome>[,<detail>][,<duration ms>]`` (≤ 63 characters).

    ``deliver:<name>`` is stored as ``d:<name>``, the other stages by their letter.
    """
    code = STAGE_CODES.get(stage) or stage.replace("deliver:", "d:", 1)
    parts = [outcome]
    if detail or duration_s is not None:
        parts.append(_clean(detail))
    if duration_s is not None:
        parts.append(f"{duration_s * 1000:.1f}")
    return code + "|" + ",".join(parts)


@dataclass(frozen=True)
class Acceptance:
    """A unit an entry point is about to publish (``session_id`` is the unit's id)."""

    session_id: str
    trigger: dict[str, Any] | None = None
    destination: str = ""  # set when only this destination's delivery is replayed
    event: Conversion | None = None

    @classmethod
    def of(cls, work: Work, destination: str = "") -> Acceptance:
        """The acceptance of a unit about to be published."""
        return cls(work.session_id, work.trigger, destination, work.event)

    def keys(self) -> list[str]:
        """The _ACCEPT script's keys."""
        return _keys(self.session_id, self.event.session_id if self.event else None)

    def args(self, now: float, source: str, ttl_s: int) -> list[str | float | int]:
        """The _ACCEPT script's arguments, in its order."""
        context = Work(self.session_id, trigger=self.trigger, event=self.event).context()
        event_id = str((self.trigger or {}).get("event_id") or "")
        kind, session_of = (
            ("", "") if self.event is None else (self.event.type, self.event.session_id)
        )
        return [
            self.session_id,
            now,
            source,
            orjson.dumps(context).decode() if context else "",
            event_id,
            self.destination,
            LOG_MAX_ENTRIES,
            kind,
            session_of or "",
            ttl_s,
            CONVERSIONS_LISTED,
        ]


@dataclass
class Event:
    """What one stage decided for one session, for the ledger."""

    work: Work
    stage: str  # fetch, validate, enrich, deliver:<name>
    outcome: str  # ok, skipped, retry, dead:<reason>, busy
    key: str = ""  # the entry's field this sets: f, or d:<name>
    value: str = ""  # q r d x
    detail: str = ""
    duration_s: float | None = None
    next_at: float | None = None
    destinations: dict[str, str] = field(default_factory=dict)  # name → q | d


@dataclass(frozen=True)
class Recorded:
    """What the ledger said back: the state before and after, and when it was accepted."""

    before: str
    after: str
    accepted_at: float


class Ledger:
    """The worker's (asyncio) side: stage outcomes, written per batch in one round trip."""

    def __init__(self, client: aioredis.Redis, *, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._update_many = client.register_script(_UPDATE_MANY)
        self._accept = client.register_script(_ACCEPT)

    async def accept(self, items: Sequence[Acceptance], source: str) -> list[str]:
        """Record sessions as accepted (the ingress); their states before."""
        now = time.time()

        def fill(pipe: Any) -> None:
            for item in items:
                scripts.call(pipe, self._accept, item.keys(), item.args(now, source, self._ttl_s))

        return [_text(state) for state in await scripts.execute(self._redis, fill, [self._accept])]

    async def record(
        self, events: Sequence[Event], retries: Sequence[tuple[Work, float]] = ()
    ) -> list[Recorded]:
        """Apply every event and schedule every retry (one round trip); what each became.

        A retry's stage is the one its Event names (the last event for that session). A
        session's events are applied together, in order, as one update: a fetch recorded with
        its delivery costs Redis one update, not two.
        """
        if not events and not retries:
            return []
        now = time.time()
        stages = {event.work.session_id: event.stage for event in events}
        units: dict[str, list[Event]] = {}
        for event in events:
            units.setdefault(event.work.session_id, []).append(event)
        keys: list[str] = [LEDGER_OPEN, LEDGER_IDLE, LEDGER_COUNTS]
        args: list[str | float | int] = [now, self._ttl_s, "foreign", LOG_MAX_ENTRIES]
        for session_id, its_events in units.items():
            keys += [ledger_key(session_id), ledger_trigger_key(session_id)]
            args += _unit_args(its_events)

        def fill(pipe: Any) -> None:
            if events:
                scripts.call(pipe, self._update_many, keys, args)
            # Setting a score and a field again is harmless if a NOSCRIPT makes this run twice.
            for work, delay_s in retries:
                member = due_member(_retry_stage(stages.get(work.session_id)), work.session_id)
                pipe.zadd(DUE, {member: now + delay_s})
                pipe.hset(DUE_WORK, member, orjson.dumps(work.to_message()))

        executed = await scripts.execute(self._redis, fill, [self._update_many])
        replies = executed[0] if events else []
        outcome_of = {}
        for session_id, reply in zip(units, replies, strict=True):
            before, after, accepted = _text(reply).split("|")
            outcome_of[session_id] = Recorded(before, after, float(accepted or now))
        return [outcome_of[event.work.session_id] for event in events]


def _unit_args(events: Sequence[Event]) -> list[str | float | int]:
    """_UPDATE_MANY's arguments for one session: its events applied together, in order."""
    destinations: dict[str, str] = {}
    for event in events:
        destinations.update(event.destinations)
    next_at = [event.next_at for event in events if event.next_at is not None]
    return _own_args(
        events[0].work.session_id,
        key=",".join(event.key for event in events if event.key),
        value=",".join(event.value for event in events if event.key),
        entry=";".join(
            log_entry(event.stage, event.outcome, event.detail, event.duration_s)
            for event in events
        ),
        next_at=next_at[-1] if next_at else None,
        destinations=destinations,
        context=events[0].work.context(),
    )


def _own_args(
    session_id: str,
    *,
    key: str = "",
    value: str = "",
    entry: str = "",
    next_at: float | None = None,
    destinations: dict[str, str] | None = None,
    context: dict[str, Any] | None = None,
) -> list[str | float | int]:
    """What one session's update has of its own: _UPDATE's ARGV 1, 3-8 and 11, in order
    (progress is expected by the next attempt, when there is one)."""
    due: str | float = "" if next_at is None else next_at
    return [
        session_id,
        key,
        value,
        entry,
        due,
        due,
        ",".join(f"{name}={state}" for name, state in (destinations or {}).items()),
        orjson.dumps(context).decode() if context else "",
    ]


def update_args(own: list[str | float | int], now: float, ttl_s: int) -> list[str | float | int]:
    """_UPDATE's arguments, in its order: a session's own (``_own_args``) and the shared ones."""
    return [own[0], now, *own[1:7], ttl_s, "foreign", own[7], LOG_MAX_ENTRIES]


class LedgerWriter:
    """The blocking side: acceptance before publishing (the console, the ingress), and the
    reconciler's touch."""

    def __init__(self, client: redis.Redis, *, ttl_s: int = 7 * 24 * 3600) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._accept = client.register_script(_ACCEPT)
        self._update = client.register_script(_UPDATE)

    def touch(
        self, session_ids: Sequence[str], stage: str, outcome: str, now: float | None = None
    ) -> None:
        """Log an event for each session and expect its progress from now (one round trip)."""
        now = time.time() if now is None else now
        entry = log_entry(stage, outcome)
        with self._redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                args = update_args(_own_args(session_id, entry=entry), now, self._ttl_s)
                self._update(_keys(session_id), args, client=pipe)
            pipe.execute()

    def accept(self, items: Sequence[Acceptance], source: str) -> list[str]:
        """Record sessions as accepted in one round trip; their states before."""
        now = time.time()

        def fill(pipe: Any) -> None:
            for item in items:
                scripts.call(pipe, self._accept, item.keys(), item.args(now, source, self._ttl_s))

        return [_text(s) for s in scripts.execute_sync(self._redis, fill, [self._accept])]

    def close(self) -> None:
        """Close the connection."""
        self._redis.close()


def _retry_stage(stage: str | None) -> str:
    """The stage a retry runs again: validate and enrich failures fetch again."""
    if stage is None or not stage.startswith("deliver:"):
        return "fetch"
    return stage


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
