"""Conversions through the pipeline over a real Redis: their session reused or fetched, kept
for the next ones, missing or refused by FunnelFox; their own delivery records and routing."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import httpx
import jsonschema
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from pipelines import RecordingSink, fixed_clock, run_pipeline

from config.destinations import Filters
from worker import errors, pipeline
from worker.cli.dlq import plan_replay
from worker.conversions import Conversion
from worker.enrichments import EnrichmentCache, decode
from worker.keys import delivered_key, enriched_key
from worker.pipeline import Pipeline
from worker.schema import PUBLISHED_EVERY_TYPE
from worker.sinks.base import Sink
from worker.work import Work
from workshop.sessions import make_session

T = TypeVar("T")
COMPLETION = {"event_id": "evt_done", "type": "onboarding.completed"}
MAX_BODY_BYTES = 64 * 1024  # FUNNELFOX_MAX_BODY_BYTES; the simulator's sessions are ~3 kB
EVERY_TYPE = jsonschema.Draft202012Validator(json.loads(PUBLISHED_EVERY_TYPE.read_text()))


class FunnelFox:
    """Get Session, counting the requests per session id."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        session_id = request.url.path.rsplit("/", 1)[-1]
        self.requests[session_id] += 1
        if "missing" in session_id:
            return httpx.Response(404, json={"message": "Not Found"})
        if "flaky" in session_id:
            return httpx.Response(503)
        if "broken" in session_id:
            return httpx.Response(200, content=b'{"id": "%s"}' % session_id.encode())
        if "huge" in session_id:
            return httpx.Response(200, content=b" " * (MAX_BODY_BYTES + 1))
        return httpx.Response(200, content=orjson.dumps(make_session(session_id)))


def run(
    redis_url: str,
    use: Callable[[Pipeline], Coroutine[Any, Any, T]],
    sinks: Sequence[Sink],
    funnelfox: FunnelFox,
    *,
    keep_s: int | None = 60,
) -> T:
    """What ``use`` returns from a pipeline that keeps enrichments ``keep_s`` (None: not at
    all), on a fixed clock."""
    return run_pipeline(
        redis_url,
        sinks,
        use,
        funnelfox,
        max_body_bytes=MAX_BODY_BYTES,
        with_client=lambda client: {
            "enrichments": None if keep_s is None else EnrichmentCache(client, ttl_s=keep_s)
        },
        now=fixed_clock,
    )


def conversion(event_id: str, event_type: str, session_id: str | None, **data: Any) -> Work:
    trigger = {"event_id": event_id, "type": event_type}
    error = None if session_id else "no_session_id"
    return Work(event_id, trigger=trigger, event=Conversion(event_type, data, session_id, error))


def payload(work: Work) -> dict[str, Any]:
    assert work.payload is not None
    return orjson.loads(work.payload)  # type: ignore[no-any-return]


def test_conversions_reuse_the_enrichment_their_sessions_completion_built(
    redis_url: str, redis_client: redis.Redis
) -> None:
    funnelfox, sink = FunnelFox(), RecordingSink("webhook")
    completed = run(
        redis_url, lambda p: p.fetch([Work("ses_c1", trigger=COMPLETION)]), [sink], funnelfox
    )
    ttl = redis_client.ttl(enriched_key("ses_c1"))
    assert 0 < ttl <= 60
    later = [
        conversion("evt_sub", "subscription.active", "ses_c1", vendor="stripe"),
        conversion("evt_buy", "purchase.completed", "ses_c1", price=999),
    ]
    result = run(redis_url, lambda p: p.fetch(later), [sink], funnelfox)

    assert funnelfox.requests == {"ses_c1": 1}  # two FunnelFox requests saved
    assert result.done == ["evt_sub", "evt_buy"]
    session = payload(completed.deliveries["webhook"][0])
    sub, buy = (payload(w) for w in result.deliveries["webhook"])
    assert (sub["type"], buy["type"]) == ("subscription.active", "purchase.completed")
    for got in (sub, buy):
        assert got["data"]["session"] == session["data"]["session"]
        assert got["data"]["enrichment"] == session["data"]["enrichment"]
        assert got["data"]["session_error"] is None
    assert sub["data"]["event"] == {"vendor": "stripe"}
    assert buy["data"]["trigger"] == {"event_id": "evt_buy", "type": "purchase.completed"}
    assert [e.detail for e in result.events] == ["reused", "reused"]


def test_a_conversion_fetches_its_session_when_nothing_is_kept_and_keeps_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    funnelfox = FunnelFox()
    first = [conversion("evt_a", "subscription.created", "ses_c2")]
    run(redis_url, lambda p: p.fetch(first), [RecordingSink("webhook")], funnelfox)
    assert funnelfox.requests == {"ses_c2": 1}
    kept = redis_client.get(enriched_key("ses_c2"))
    assert kept is not None
    entry = decode(kept)
    assert entry is not None
    assert orjson.loads(entry.session) == make_session("ses_c2")

    again = [conversion("evt_b", "subscription.active", "ses_c2")]
    run(redis_url, lambda p: p.fetch(again), [RecordingSink("webhook")], funnelfox)
    assert funnelfox.requests == {"ses_c2": 1}


def test_with_the_cache_off_every_conversion_fetches(
    redis_url: str, redis_client: redis.Redis
) -> None:
    funnelfox = FunnelFox()
    works = [
        Work("ses_c3", trigger=COMPLETION),
        conversion("evt_c", "purchase.completed", "ses_c3"),
    ]
    for work in works:
        run(
            redis_url,
            lambda p, w=work: p.fetch([w]),
            [RecordingSink("webhook")],
            funnelfox,
            keep_s=None,
        )
    assert funnelfox.requests == {"ses_c3": 2}
    assert not redis_client.exists(enriched_key("ses_c3"))


def test_sessions_enqueued_without_an_event_are_not_kept(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The console and backfills: no conversion is expected to follow them soon."""
    run(redis_url, lambda p: p.fetch([Work("ses_cli")]), [RecordingSink("webhook")], FunnelFox())
    assert not redis_client.exists(enriched_key("ses_cli"))


def test_a_conversion_without_a_session_is_delivered_with_session_null(redis_url: str) -> None:
    funnelfox = FunnelFox()
    work = conversion("evt_nosession", "purchase.completed", None, price=999)
    result = run(redis_url, lambda p: p.fetch([work]), [RecordingSink("webhook")], funnelfox)
    assert funnelfox.requests == {}
    data = payload(result.deliveries["webhook"][0])["data"]
    assert (data["session"], data["enrichment"], data["session_error"]) == (
        None,
        None,
        "no_session_id",
    )
    assert data["event"] == {"price": 999}


@pytest.mark.parametrize(
    ("session_id", "reason"),
    [
        ("ses_missing", "not_found"),
        ("ses_broken", "invalid_payload"),
        ("ses_huge", "too_large"),
    ],
)
def test_a_conversion_whose_session_funnelfox_refuses_is_delivered_with_the_reason(
    redis_url: str, session_id: str, reason: str
) -> None:
    work = conversion("evt_refused", "subscription.cancelled", session_id)
    result = run(redis_url, lambda p: p.fetch([work]), [RecordingSink("webhook")], FunnelFox())
    assert result.dead == []
    delivered = payload(result.deliveries["webhook"][0])
    EVERY_TYPE.validate(delivered)
    data = delivered["data"]
    assert (data["session"], data["session_error"]) == (None, reason)
    assert [(e.outcome, e.detail) for e in result.events] == [("ok", reason)]


def test_a_conversion_whose_session_is_unavailable_is_retried_like_a_session(
    redis_url: str,
) -> None:
    work = conversion("evt_flaky", "subscription.active", "ses_flaky")
    result = run(redis_url, lambda p: p.fetch([work]), [RecordingSink("webhook")], FunnelFox())
    assert result.deliveries == {}
    [(retry, _)] = result.retries
    assert (retry.session_id, retry.attempts, retry.event) == ("evt_flaky", 1, work.event)


def test_a_conversion_is_its_own_unit_and_delivered_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    sink = RecordingSink("webhook")
    session = Work("ses_u", trigger=COMPLETION)
    sub = conversion("evt_u", "subscription.active", "ses_u")

    async def both(p: Pipeline) -> None:
        built = await p.fetch([session, sub])
        await p.deliver("webhook", built.deliveries["webhook"])
        again = await p.fetch([session, sub])
        assert again.skipped == ["ses_u", "evt_u"]
        assert again.deliveries == {}

    run(redis_url, both, [sink], FunnelFox())
    assert redis_client.exists(delivered_key("webhook", "ses_u"))
    assert redis_client.exists(delivered_key("webhook", "evt_u"))
    assert [(d.session_id, d.event_id) for d in sink.received] == [
        ("ses_u", None),
        ("ses_u", "evt_u"),
    ]


def test_a_conversions_dead_letter_replays_it_with_its_event(redis_url: str) -> None:
    refusing = RecordingSink("webhook", lambda _: errors.SinkGone("webhook answered 410"))
    work = conversion("evt_dead", "purchase.completed", None, price=5)

    async def fail(p: Pipeline) -> None:
        built = await p.fetch([work])
        await p.deliver("webhook", built.deliveries["webhook"])

    run(redis_url, fail, [refusing], FunnelFox())

    async def replay() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await plan_replay(client, ["evt_dead"])
        finally:
            await client.aclose()

    plan = asyncio.run(replay())
    [letter] = plan.letters
    assert (letter.session_id, letter.stage, letter.reason) == (
        "evt_dead",
        "deliver:webhook",
        "gone",
    )
    assert letter.event == work.event.to_message()  # type: ignore[union-attr]
    [again] = plan.deliveries["webhook"]
    assert again.event == work.event
    assert payload(again)["type"] == "purchase.completed"


def test_routing_decides_which_destinations_take_a_type(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def revenue_to_warehouse(payload_type: str, destinations: Any) -> list[str]:
        revenue = payload_type.startswith(("purchase.", "subscription."))
        return [d for d in destinations if (d == "warehouse") == revenue]

    monkeypatch.setattr(pipeline, "destinations_for", revenue_to_warehouse)
    sinks = [RecordingSink("webhook"), RecordingSink("warehouse")]
    works = [Work("ses_r", trigger=COMPLETION), conversion("evt_r", "purchase.completed", "ses_r")]
    result = run(redis_url, lambda p: p.fetch(works), sinks, FunnelFox())
    assert [w.session_id for w in result.deliveries["webhook"]] == ["ses_r"]
    assert [w.session_id for w in result.deliveries["warehouse"]] == ["evt_r"]
    assert [e.destinations for e in result.events] == [{"webhook": "q"}, {"warehouse": "q"}]


def test_destinations_filters_take_a_conversion_by_its_own_type_and_its_events_funnel(
    redis_url: str,
) -> None:
    """Real filters, real routing: a conversion sent with no trigger is routed by its own
    type (not read as onboarding.completed), and one without its session by its event's
    funnel."""
    crm = RecordingSink("crm")
    crm.filters = Filters(event_types=("onboarding.completed",))
    revenue = RecordingSink("revenue")
    revenue.filters = Filters(event_types=("purchase.completed", "subscription.active"))
    funnel_a = RecordingSink("funnel_a")
    funnel_a.filters = Filters(funnel_ids=("fun_A",))
    untriggered = Work(
        "evt_bare", event=Conversion("purchase.completed", {"price": 5}, "ses_f")
    )  # an enrich_batch item with an event and no trigger
    sessionless = Work(
        "evt_nos",
        trigger={"event_id": "evt_nos", "type": "subscription.active", "funnel_id": "fun_A"},
        event=Conversion("subscription.active", {}, None, "no_session_id"),
    )
    works = [Work("ses_f", trigger=COMPLETION), untriggered, sessionless]
    result = run(redis_url, lambda p: p.fetch(works), [crm, revenue, funnel_a], FunnelFox())

    # The one without a session is planned before the fetched ones: compare without order.
    routed = {sink: sorted(w.session_id for w in got) for sink, got in result.deliveries.items()}
    assert routed == {"crm": ["ses_f"], "revenue": ["evt_bare", "evt_nos"], "funnel_a": ["evt_nos"]}
    assert {e.work.session_id: e.destinations for e in result.events} == {
        "ses_f": {"crm": "q", "revenue": "s", "funnel_a": "s"},
        "evt_bare": {"crm": "s", "revenue": "q", "funnel_a": "s"},
        "evt_nos": {"crm": "s", "revenue": "q", "funnel_a": "q"},
    }
