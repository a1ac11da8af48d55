"""The session ledger on a real Redis: states, counts, expiry, due retries, the reconciler."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import orjson
import redis
import redis.asyncio as aioredis

from config import load_settings
from worker.cli.status import main as status_main
from worker.conversions import Conversion
from worker.keys import (
    DUE,
    LEDGER_COUNTS,
    LEDGER_IDLE,
    LEDGER_OPEN,
    QUEUED_AT_HEADER,
    ledger_conversions_key,
    ledger_key,
    ledger_trigger_key,
)
from worker.ledger import CONVERSIONS_LISTED, Acceptance, Event, Ledger, LedgerWriter
from worker.schedule import Candidate, DueRetries, Reconciler
from worker.work import Work


def record(redis_url: str, events: Sequence[Event], retries: Sequence[tuple[Work, float]] = ()):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await Ledger(client, ttl_s=60).record(events, retries)
        finally:
            await client.aclose()

    return asyncio.run(main())


def entry(client: redis.Redis, session_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(ledger_key(session_id)).items()}


def attempts(client: redis.Redis, session_id: str) -> list[str]:
    """The attempt log, oldest first."""
    found = entry(client, session_id)
    numbered = [(int(k[1:]), v) for k, v in found.items() if k[:1] == "l" and k[1:].isdigit()]
    return [text for _, text in sorted(numbered)]


def counts(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(LEDGER_COUNTS).items()}


def test_a_session_from_acceptance_to_delivery(redis_url: str, redis_client: redis.Redis) -> None:
    writer = LedgerWriter(redis_client)
    trigger = {"event_id": "evt_1", "type": "onboarding.completed", "created_at": 1}
    assert writer.accept([Acceptance("ses_a", trigger)], "ingress") == [""]
    assert entry(redis_client, "ses_a")["st"] == "queued"
    assert counts(redis_client)["queued"] == 1

    work = Work("ses_a", trigger=trigger)
    fetched = Event(work, "fetch", "ok", "f", "d", destinations={"webhook": "q", "stream": "q"})
    [after_fetch] = record(redis_url, [fetched])
    assert (after_fetch.before, after_fetch.after) == ("queued", "in_progress")
    failed = Event(
        work.retried(), "deliver:webhook", "retry", "d:webhook", "r", "503", 0.01, time.time() + 5
    )
    stream_ok = Event(work, "deliver:stream", "ok", "d:stream", "d", duration_s=0.002)
    assert [r.after for r in record(redis_url, [failed, stream_ok])] == ["retrying", "retrying"]
    assert entry(redis_client, "ses_a")["n"]
    [done] = record(redis_url, [Event(work, "deliver:webhook", "ok", "d:webhook", "d")])

    assert done.after == "delivered"
    found = entry(redis_client, "ses_a")
    assert found["st"] == "delivered"
    assert {"n", "u"}.isdisjoint(found)  # what only an unfinished session needs is gone
    assert not redis_client.exists(ledger_key("ses_a") + ":t")
    assert found["e"] == "evt_1"
    outcomes = [text.split(",")[:3:2] for text in attempts(redis_client, "ses_a")]
    assert outcomes == [
        ["a", "ok"],
        ["f", "ok"],
        ["d:webhook", "retry"],
        ["d:stream", "ok"],
        ["d:webhook", "ok"],
    ]
    assert 0 < redis_client.ttl(ledger_key("ses_a")) <= 60
    assert redis_client.zscore(LEDGER_OPEN, "ses_a") is None
    assert redis_client.zscore(LEDGER_IDLE, "ses_a") is None
    assert counts(redis_client) == {
        "queued": 0,
        "in_progress": 0,
        "retrying": 0,
        "finished:delivered": 1,
    }


def test_a_dead_destination_makes_the_session_dead_once_all_are_settled(
    redis_url: str, redis_client: redis.Redis
) -> None:
    work = Work("ses_b")
    record(
        redis_url,
        [Event(work, "fetch", "ok", "f", "d", destinations={"webhook": "q", "stream": "q"})],
    )
    [gone] = record(redis_url, [Event(work, "deliver:webhook", "dead:gone", "d:webhook", "x")])
    assert gone.after == "in_progress"  # the stream still has it to take
    [last] = record(redis_url, [Event(work, "deliver:stream", "ok", "d:stream", "d")])
    assert last.after == "dead"
    assert entry(redis_client, "ses_b")["s"] == "foreign"  # never accepted by an entry point


def test_accepting_a_finished_session_reopens_it_and_an_unfinished_one_is_left(
    redis_url: str, redis_client: redis.Redis
) -> None:
    writer = LedgerWriter(redis_client)
    writer.accept([Acceptance("ses_c")], "cli")
    assert writer.accept([Acceptance("ses_c")], "cli") == ["queued"]
    assert counts(redis_client)["queued"] == 1
    record(redis_url, [Event(Work("ses_c"), "fetch", "dead:not_found", "f", "x")])
    assert writer.accept([Acceptance("ses_c", destination="webhook")], "replay") == ["dead"]
    found = entry(redis_client, "ses_c")
    assert (found["st"], found["f"], found["d:webhook"], found["s"]) == (
        "in_progress",
        "d",
        "q",
        "replay",
    )
    assert redis_client.ttl(ledger_key("ses_c")) == -1  # unfinished again: kept


def test_the_attempt_log_is_bounded(redis_url: str, redis_client: redis.Redis) -> None:
    work = Work("ses_d")
    events = [
        Event(work, "fetch", "retry", "f", "r", "ConnectTimeout", 0.5, time.time() + 1)
        for _ in range(200)
    ]
    record(redis_url, events)
    kept = attempts(redis_client, "ses_d")
    assert len(kept) == 40
    assert entry(redis_client, "ses_d")["ln"] == "200"
    assert redis_client.object("encoding", ledger_key("ses_d")) == b"listpack"


def test_due_retries_are_taken_once_when_due(redis_url: str, redis_client: redis.Redis) -> None:
    works = [Work(f"ses_due{n}", attempts=1, payload=b'{"p": 1}') for n in range(50)]
    events = [Event(w, "deliver:webhook", "retry", "d:webhook", "r") for w in works]
    record(redis_url, events, [(w, 0.2) for w in works])
    record(
        redis_url, [Event(Work("ses_later"), "fetch", "retry", "f", "r")], [(Work("ses_later"), 60)]
    )

    sent: list[tuple[str, list[str]]] = []

    def take() -> int:
        client = redis.Redis.from_url(redis_url)
        try:
            due = DueRetries(client, batch_size=20)
            return due.publish_due(
                lambda ws: sent.append(("fetch", [w.session_id for w in ws])),
                lambda sink, ws: sent.append((sink, [w.session_id for w in ws])),
                now=time.time() + 1,
            )
        finally:
            client.close()

    with ThreadPoolExecutor(4) as pool:  # four workers racing for the same due retries
        taken = list(pool.map(lambda _: take(), range(4)))

    assert sum(taken) == 50
    delivered = [sid for sink, ids in sent for sid in ids if sink == "webhook"]
    assert sorted(delivered) == sorted(w.session_id for w in works)
    assert all(len(ids) <= 20 for _, ids in sent)
    assert redis_client.zcard(DUE) == 1  # ses_later is not due yet


def queue_message(client: redis.Redis, queue: str, queued_at: float) -> None:
    body = {"headers": {QUEUED_AT_HEADER: queued_at}, "body": ""}
    client.lpush(queue, json.dumps(body))


def test_the_reconciler_publishes_only_sessions_whose_messages_are_gone(
    redis_client: redis.Redis,
) -> None:
    now = time.time()
    writer = LedgerWriter(redis_client)
    writer.accept(
        [Acceptance("ses_lost"), Acceptance("ses_waiting"), Acceptance("ses_fresh")], "cli"
    )
    # Progress was expected by these times; the enrich queue's oldest message was queued at
    # now - 500: ses_waiting (expected by now - 600) is behind it... no: it was published
    # before it, so its message left the queue; ses_lost too. Only a message queued before the
    # watermark can be gone, so make ses_waiting's expectation newer than the watermark.
    redis_client.zadd(
        LEDGER_IDLE, {"ses_lost": now - 900, "ses_waiting": now - 400, "ses_fresh": now}
    )
    queue_message(redis_client, "enrich", now - 450)  # the oldest message still queued
    published: list[str] = []
    reconciler = Reconciler(redis_client, after_s=300, batch_size=100, lock_ttl_s=10)

    lost = reconciler.run_once(lambda ws: published.extend(w.session_id for w in ws), now=now)

    assert lost == ["ses_lost"] == published
    assert redis_client.zscore(LEDGER_IDLE, "ses_lost") == now  # expected again from now
    assert attempts(redis_client, "ses_lost")[-1].startswith("r,")


def test_the_reconciler_leaves_scheduled_retries_and_runs_one_at_a_time(
    redis_url: str, redis_client: redis.Redis
) -> None:
    now = time.time()
    work = Work("ses_sched")
    record(redis_url, [Event(work, "fetch", "retry", "f", "r", next_at=now - 400)], [(work, 0)])
    redis_client.zadd(LEDGER_IDLE, {"ses_sched": now - 400})
    reconciler = Reconciler(redis_client, after_s=300, batch_size=100, lock_ttl_s=10)
    assert reconciler.run_once(lambda ws: None, now=now) == []  # its retry is in the due index

    redis_client.delete(DUE)  # taken by a worker that died before publishing it
    other = Reconciler(redis_client, after_s=300, batch_size=100, lock_ttl_s=10)
    redis_client.set("ffe:reconcile:lock", "another-worker", px=5000)
    assert other.run_once(lambda ws: None, now=now) == []  # someone else is reconciling
    redis_client.delete("ffe:reconcile:lock")
    assert other.run_once(lambda ws: None, now=now) == ["ses_sched"]


def test_a_finished_session_costs_little(redis_url: str, redis_client: redis.Redis) -> None:
    """What LEDGER_TTL_S keeps per session: measured in the README, bounded here."""
    trigger = {
        "event_id": "evt_01HZX3P7Q0V1M2N3B4C5D6E7F8",
        "type": "onboarding.completed",
        "created_at": 1716672462,
        "is_sandbox": False,
        "project_id": "01HZX3P7Q0V1M2N3B4C5D6E7PR",
        "funnel_id": "01HZX3P7Q0V1M2N3B4C5D6E7FN",
        "profile_id": "pro_01HZX3P7Q0V1M2N3B4C5D6E7PF",
    }
    sid = "ses_01HZX3P7Q0V1M2N3B4C5D6E7F8"
    LedgerWriter(redis_client).accept([Acceptance(sid, trigger)], "ingress")
    work = Work(sid, trigger=trigger)
    record(
        redis_url,
        [Event(work, "fetch", "ok", "f", "d", duration_s=0.0123, destinations={"webhook": "q"})],
    )
    record(redis_url, [Event(work, "deliver:webhook", "ok", "d:webhook", "d", duration_s=0.0045)])
    size = redis_client.memory_usage(ledger_key(sid))
    assert size is not None
    assert size <= 400, size
    assert orjson.loads(orjson.dumps(entry(redis_client, sid)))["st"] == "delivered"


# -- conversions: units keyed by their event id, listed under their session ---------------------


def conversion_work(event_id: str, session_id: str | None, **data: object) -> Work:
    kind = "subscription.active" if session_id else "purchase.completed"
    event = Conversion(kind, data, session_id, None if session_id else "no_session_id")
    return Work(event_id, trigger={"event_id": event_id, "type": kind}, event=event)


def test_a_conversion_has_its_own_entry_listed_under_its_session(
    redis_url: str, redis_client: redis.Redis
) -> None:
    writer = LedgerWriter(redis_client, ttl_s=60)
    writer.accept([Acceptance("ses_s", {"event_id": "evt_done"})], "ingress")
    sub = conversion_work("evt_sub", "ses_s", vendor="stripe")
    alone = conversion_work("evt_alone", None)
    assert writer.accept([Acceptance.of(sub), Acceptance.of(alone)], "ingress") == ["", ""]

    found = entry(redis_client, "evt_sub")
    assert (found["st"], found["k"], found["ss"], found["e"]) == (
        "queued",
        "subscription.active",
        "ses_s",
        "evt_sub",
    )
    assert "ss" not in entry(redis_client, "evt_alone")
    assert redis_client.zrange(ledger_conversions_key("ses_s"), 0, -1) == [b"evt_sub"]
    assert 0 < redis_client.ttl(ledger_conversions_key("ses_s")) <= 60
    assert entry(redis_client, "ses_s")["st"] == "queued"  # the session's own entry untouched
    assert counts(redis_client)["queued"] == 3

    # The reconciler rebuilds the conversion, event and all, from its trigger key.
    trigger = redis_client.get(ledger_trigger_key("evt_sub"))
    rebuilt = Candidate("evt_sub", 0.0, found, trigger).work()
    assert rebuilt == Work(
        "evt_sub", first_seen_at=float(found["a"]), trigger=sub.trigger, event=sub.event
    )

    record(
        redis_url, [Event(sub, "fetch", "ok", "f", "d", "reused", destinations={"webhook": "q"})]
    )
    [done] = record(redis_url, [Event(sub, "deliver:webhook", "ok", "d:webhook", "d")])
    assert done.after == "delivered"
    assert not redis_client.exists(ledger_trigger_key("evt_sub"))
    fetched = attempts(redis_client, "evt_sub")[1].split(",")
    assert (fetched[0], fetched[2], fetched[3]) == ("f", "ok", "reused")


def test_a_session_lists_its_latest_conversions_only(redis_client: redis.Redis) -> None:
    writer = LedgerWriter(redis_client, ttl_s=60)
    for n in range(CONVERSIONS_LISTED + 5):
        writer.accept([Acceptance.of(conversion_work(f"evt_{n:02d}", "ses_many"))], "ingress")
    writer.accept([Acceptance.of(conversion_work("evt_03", "ses_many"))], "replay")  # again
    listed = [m.decode() for m in redis_client.zrange(ledger_conversions_key("ses_many"), 0, -1)]
    assert len(listed) == CONVERSIONS_LISTED
    assert listed[-1] == "evt_03"
    assert "evt_00" not in listed


def test_the_reconciler_publishes_a_lost_conversion_with_its_event(
    redis_client: redis.Redis,
) -> None:
    now = time.time()
    lost = conversion_work("evt_lost", "ses_of_lost", price=999)
    LedgerWriter(redis_client).accept([Acceptance.of(lost)], "ingress")
    redis_client.zadd(LEDGER_IDLE, {"evt_lost": now - 900})
    published: list[Work] = []
    reconciler = Reconciler(redis_client, after_s=300, batch_size=100, lock_ttl_s=10)

    assert reconciler.run_once(published.extend, now=now) == ["evt_lost"]
    [work] = published
    assert (work.session_id, work.event, work.trigger) == ("evt_lost", lost.event, lost.trigger)


def test_status_tells_a_conversion_and_lists_a_sessions_conversions(
    redis_url: str, redis_client: redis.Redis
) -> None:
    writer = LedgerWriter(redis_client)
    writer.accept([Acceptance("ses_told", {"event_id": "evt_done"})], "ingress")
    sub = conversion_work("evt_told", "ses_told")
    writer.accept([Acceptance.of(sub)], "ingress")
    record(
        redis_url, [Event(sub, "fetch", "ok", "f", "d", "reused", destinations={"webhook": "q"})]
    )
    record(redis_url, [Event(sub, "deliver:webhook", "ok", "d:webhook", "d")])
    writer.accept([Acceptance.of(conversion_work("evt_early", "ses_unseen"))], "ingress")

    out, err = io.StringIO(), io.StringIO()
    settings = load_settings(require_sink=False, redis_url=redis_url)
    code = status_main(
        settings, ["ses_told", "evt_told", "ses_unseen", "ses_none"], out=out, err=err
    )

    assert code == 1
    assert "ses_none: unknown" in err.getvalue()
    session, told, unseen = (json.loads(line) for line in out.getvalue().splitlines())
    assert session["session_id"] == "ses_told"
    assert session["state"] == "queued"
    assert session["conversions"] == [
        {"event_id": "evt_told", "type": "subscription.active", "state": "delivered"}
    ]
    assert (told["event_id"], told["type"], told["session_id"]) == (
        "evt_told",
        "subscription.active",
        "ses_told",
    )
    assert told["state"] == "delivered"
    assert told["destinations"] == {"webhook": "delivered"}
    assert [(a["stage"], a["outcome"]) for a in told["attempts"]] == [
        ("accepted", "ok"),
        ("fetch", "ok"),
        ("deliver:webhook", "ok"),
    ]
    assert told["attempts"][1]["detail"] == "reused"
    assert "conversions" not in told
    # A session whose conversion came first (or that was never accepted) still shows them.
    assert unseen["state"] is None
    assert [c["event_id"] for c in unseen["conversions"]] == ["evt_early"]


def script_exists_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_script|exists", {}).get("calls", 0))


def test_ledger_writes_are_one_round_trip_and_survive_a_script_flush(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Scripts go by SHA (no SCRIPT EXISTS per pipeline); a Redis that lost them (a restart,
    a failover) has them loaded again and the write still happens once."""
    writer = LedgerWriter(redis_client)
    work = Work("ses_sha", trigger={"event_id": "evt_sha"})
    writer.accept([Acceptance("ses_warm", None)], "console")  # loads the scripts if need be
    record(redis_url, [Event(Work("ses_warm"), "fetch", "ok", "f", "d")])
    before = script_exists_calls(redis_client)
    redis_client.script_flush()
    assert writer.accept([Acceptance.of(work)], "ingress") == [""]
    redis_client.script_flush()
    fetched = Event(work, "fetch", "ok", "f", "d", destinations={"webhook": "q"})
    [recorded] = record(redis_url, [fetched], [(work, 5.0)])
    assert (recorded.before, recorded.after) == ("queued", "in_progress")
    assert redis_client.zcard(DUE) == 1
    assert [text.split(",")[0] for text in attempts(redis_client, "ses_sha")] == ["a", "f"]
    assert script_exists_calls(redis_client) == before


def commands_run_by(client: redis.Redis, db: int, action: Callable[[], object]) -> list[str]:
    """The commands scripts ran on ``db`` while ``action`` ran, as MONITOR saw them."""
    marker = f"end-of-{time.time_ns()}"
    with client.monitor() as monitor:
        action()
        client.echo(marker)
        seen: list[str] = []
        while True:
            command = monitor.next_command()
            if marker in command["command"]:
                return seen
            if command["db"] == db and command["client_type"] == "lua":
                seen.append(command["command"].split()[0].lower())


def test_accepting_and_finishing_cost_redis_a_few_commands_a_session(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Accepting a session costs Redis five commands. The finishing path's script reads an
    entry once and writes it once; what every session shares (counts, the open and idle sets)
    is written once per batch: five commands a session and a handful per batch, not 23."""
    ids = [f"ses_cost_{i}" for i in range(50)]
    db = int(redis_client.connection_pool.connection_kwargs.get("db", 0))
    writer = LedgerWriter(redis_client)
    accepted = commands_run_by(
        redis_client, db, lambda: writer.accept([Acceptance(sid) for sid in ids], "console")
    )
    # hget (its state), hset (the entry), hincrby (counts), zadd × 2 (open, idle)
    assert len(accepted) == 5 * 50, sorted(set(accepted))
    events = []
    for sid in ids:
        work = Work(sid)
        events.append(Event(work, "fetch", "ok", "f", "d", destinations={"webhook": "q"}))
        events.append(Event(work, "deliver:webhook", "ok", "d:webhook", "d", duration_s=0.002))

    seen = commands_run_by(redis_client, db, lambda: record(redis_url, events))

    per_session = {"hgetall", "hset", "hdel", "del", "expire"}
    assert {name: seen.count(name) for name in per_session} == dict.fromkeys(per_session, 50)
    shared = [name for name in seen if name not in per_session]
    assert len(shared) <= 5, shared  # counts (before, after) and the two sets
    assert counts(redis_client) == {"queued": 0, "finished:delivered": 50}
    assert redis_client.zcard(LEDGER_OPEN) == redis_client.zcard(LEDGER_IDLE) == 0
