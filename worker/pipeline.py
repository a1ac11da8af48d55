"""The stages wired together for a batch of sessions: fetch → validate → enrich → deliver.

Plain async code that knows nothing of Celery: it decides each session's fate (go on, try
again after a delay, or dead-letter) and the task layer only carries those decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from worker.background import Background
from worker.breaker import Breaker
from worker.conversions import NO_SESSION_ID
from worker.deadletters import DeadLetter, DeadLetters
from worker.enrich import enrich
from worker.enrichments import EnrichmentCache
from worker.errors import (
    EnricherError,
    InternalError,
    Permanent,
    Retryable,
    StageError,
    UpstreamAuthFailed,
)
from worker.fetch import FunnelFoxClient
from worker.inline import InlineGate
from worker.ledger import Event, Ledger, Recorded
from worker.messages import Refusal
from worker.metrics import MetricsBatch
from worker.payload import Enriched, build_conversion_payload, build_session_payload, enriched
from worker.ratelimit import FleetRateLimit
from worker.retry import RetryPolicy
from worker.routing import destinations_for
from worker.sinks.base import Delivery, Outcome, Sink
from worker.state import DeliveryState
from worker.validate import parse_session
from worker.work import Work

log = logging.getLogger("worker.pipeline")

# How long a batch's finished sessions wait for their slower batch-mates before they are
# recorded and handed over (the live path's head-of-line bound).
WAVE_S = 0.1

# The fetch's ledger detail when a conversion reused its session's kept enrichment.
REUSED = "reused"


@dataclass(frozen=True)
class _Source:
    """What a unit's payload is built from: a session, or a conversion's session_error."""

    session: Enriched | None = None
    error: str | None = None
    detail: str = ""  # what the ledger's fetch entry says besides "ok"
    duration_s: float | None = None
    fetched: bool = False  # from FunnelFox in this run (else kept, or no session)

    @classmethod
    def without_session(cls, error: str, duration_s: float | None = None) -> _Source:
        return cls(error=error, detail=error, duration_s=duration_s)


@dataclass
class StageResult:
    """What the task layer must do after a stage ran over a batch.

    With a ledger, ``retries`` are already scheduled in Redis when the stage returns (the task
    layer publishes only the deliveries); without one, the task layer queues them.
    """

    deliveries: dict[str, list[Work]] = field(default_factory=dict)
    retries: list[tuple[Work, float]] = field(default_factory=list)
    # A fetch's inline deliveries that must be tried again, per destination (not refetched).
    delivery_retries: dict[str, list[tuple[Work, float]]] = field(default_factory=dict)
    # What the ledger records about each session, in order.
    events: list[Event] = field(default_factory=list)
    # True once the ledger holds the retries (they wait in Redis, not in the broker).
    retries_scheduled: bool = False

    def merge(self, other: StageResult) -> None:
        """Add another wave's decisions to these."""
        for sink, works in other.deliveries.items():
            self.deliveries.setdefault(sink, []).extend(works)
        self.retries += other.retries
        for sink, retries in other.delivery_retries.items():
            self.delivery_retries.setdefault(sink, []).extend(retries)
        self.events += other.events
        self.dead += other.dead
        self.done += other.done
        self.skipped += other.skipped
        self.dead_payloads += other.dead_payloads
        self.retries_scheduled = self.retries_scheduled or other.retries_scheduled

    dead: list[DeadLetter] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # Payloads kept with dead letters, in the same order (None before one was built).
    dead_payloads: list[bytes | None] = field(default_factory=list)


@dataclass
class Pipeline:
    """Everything a batch needs, built once per worker process and handed in."""

    funnelfox: FunnelFoxClient
    sinks: Mapping[str, Sink]
    state: DeliveryState
    dead_letters: DeadLetters
    policy: RetryPolicy
    metrics_redis: aioredis.Redis | None = None
    ledger: Ledger | None = None
    rate_limit: FleetRateLimit | None = None
    breakers: Mapping[str, Breaker] = field(default_factory=dict)
    sink_limits: Mapping[str, FleetRateLimit] = field(default_factory=dict)
    _delays: dict[str, list[float]] = field(default_factory=dict)
    # Built enrichments kept for conversions (ENRICHMENT_CACHE_TTL_S); None: always fetch.
    enrichments: EnrichmentCache | None = None
    claim_wait_s: float = 5.0
    # Set: a fetch handed ``on_ready`` makes each session's first delivery itself (inline).
    inline: InlineGate | None = None
    # Set: a delivery still under way after a short hold finishes in the background.
    background: Background | None = None
    scrub: Callable[[str], str] = str
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    _auth_warned: bool = False

    async def fetch(
        self, batch: Sequence[Work], on_ready: Callable[[StageResult], None] | None = None
    ) -> StageResult:
        """Fetch, validate and enrich each unit; queue its payload for every pending sink.

        A conversion reuses its session's kept enrichment when there is one, and is delivered
        with ``session_error`` when it has no session FunnelFox will give. With ``on_ready``,
        units are handed over in waves as their fetches complete (every WAVE_S at most),
        recorded first: a slow session delays only itself, not its batch-mates. The result
        returned covers the whole batch either way.
        """
        result, metrics = StageResult(), MetricsBatch()
        todo = await self._pending(batch, result, metrics)
        sources = await self._sources([work for work, _ in todo])
        ready = [(w, sinks, src) for (w, sinks), src in zip(todo, sources, strict=True) if src]
        waiting = [unit for unit, src in zip(todo, sources, strict=True) if src is None]
        delays = await self._pace(waiting, result)  # leaves the sessions it lets through
        timings: list[float] = []  # fetch durations, counted in the wave they complete in
        fetching = {
            asyncio.ensure_future(self._fetch_one(work, delay, timings)): (work, sinks)
            for (work, sinks), delay in zip(waiting, delays, strict=True)
        }
        order = {future: n for n, future in enumerate(fetching)}  # the batch's own order
        total, wave = StageResult(), result
        delivering: list[asyncio.Future[StageResult]] = []
        while fetching or wave is result:
            kept: list[tuple[str, Enriched]] = []
            for work, sinks, source in ready:
                self._plan(wave, metrics, work, sinks, source, kept)
            ready = []
            if fetching:
                done, _ = await asyncio.wait(
                    fetching, timeout=WAVE_S if on_ready is not None else None
                )
                for future in sorted(done, key=order.__getitem__):
                    work, sinks = fetching.pop(future)
                    outcome = future.exception() or future.result()
                    read = self._read(work, outcome, wave, metrics)
                    if read is not None:
                        self._plan(wave, metrics, work, sinks, read, kept)
            if on_ready is None and fetching:
                continue
            for seconds in timings:
                metrics.observe("fetch_duration_seconds", seconds)
            timings.clear()
            delivering += await self._finish_wave(wave, metrics, kept, on_ready)
            total.merge(wave)
            wave = StageResult()
        for delivered in await asyncio.gather(*delivering):
            if on_ready is not None:
                await _hand_over(delivered, on_ready)
            total.merge(delivered)
        await self._flush(metrics)
        return total

    async def _finish_wave(
        self,
        wave: StageResult,
        metrics: MetricsBatch,
        kept: list[tuple[str, Enriched]],
        on_ready: Callable[[StageResult], None] | None,
    ) -> list[asyncio.Future[StageResult]]:
        """Keep the wave's enrichments, start its inline deliveries, record it and hand the
        rest over; the inline deliveries under way."""
        if self.enrichments is not None:
            await self.enrichments.put_many(kept)
        delivering = self._deliver_inline(wave, metrics) if on_ready is not None else []
        # Metrics are written once, at the end, with the inline deliveries' own: a round trip
        # less per wave (what one batch adds shows up a few seconds later at most).
        await self._record(wave, metrics, flush=False)
        if on_ready is not None:
            await _hand_over(wave, on_ready)
        return delivering

    def _deliver_inline(
        self, wave: StageResult, metrics: MetricsBatch
    ) -> list[asyncio.Future[StageResult]]:
        """Start the first delivery of a wave's sessions here, for each destination that takes
        it (the rest stay in ``wave.deliveries``, for their queues).

        A session going to one destination, inline, has its fetch recorded in the ledger with
        that delivery, as one update: taken out of ``wave.events`` here. Until then the ledger
        shows it queued; if the process dies in between, the reconciler publishes it again and
        its delivery records keep it from being delivered twice. A session going to several
        destinations has its fetch recorded first, as before, so that no destination's outcome
        is ever logged ahead of the fetch.
        """
        if self.inline is None:
            return []
        inline = [
            sink
            for sink in wave.deliveries
            if sink in self.sinks and sink not in self.sink_limits and self.inline.allows(sink)
        ]
        routes: dict[str, list[str]] = {}
        for sink, works in wave.deliveries.items():
            for work in works:
                routes.setdefault(work.session_id, []).append(sink)
        only = {sid: sinks[0] for sid, sinks in routes.items() if len(sinks) == 1}
        held: dict[str, list[Event]] = {sink: [] for sink in inline}
        kept = []
        for event in wave.events:
            holder = only.get(event.work.session_id)
            if holder in held and event.stage == "fetch" and event.outcome == "ok":
                held[holder].append(event)
            else:
                kept.append(event)
        wave.events = kept
        return [
            asyncio.ensure_future(
                self._deliver_here(sink, wave.deliveries.pop(sink), metrics, held[sink])
            )
            for sink in inline
        ]

    async def _deliver_here(
        self, sink: str, works: list[Work], metrics: MetricsBatch, fetched: list[Event]
    ) -> StageResult:
        """One destination's inline delivery, recorded with ``fetched`` (those sessions' fetch
        events); its retries go to the destination's queue."""
        assert self.inline is not None, "only started with a gate"
        started = time.monotonic()
        try:
            result = await self.deliver(sink, works, metrics=metrics, fetched=fetched)
        except Exception as exc:
            # Redis failed under the delivery record: the destination's queue takes them, and
            # its task retries the message as a whole, as it would have without inline.
            log.warning(
                "inline delivery failed as a whole; handed to the queue",
                extra={"stage": f"deliver:{sink}", "outcome": type(exc).__name__},
            )
            handed = StageResult(deliveries={sink: works}, events=fetched)
            with contextlib.suppress(Exception):  # else the reconciler sees to them
                await self._record(handed, metrics, flush=False)
            return handed
        self.inline.observe(sink, time.monotonic() - started)
        result.delivery_retries = {sink: result.retries} if result.retries else {}
        result.retries = []
        return result

    def _plan(
        self,
        result: StageResult,
        metrics: MetricsBatch,
        work: Work,
        sinks: list[str],
        source: _Source,
        kept: list[tuple[str, Enriched]],
    ) -> None:
        """Build one unit's payload and queue it for each destination whose filters take it."""
        try:
            payload = self._build(work, source)
        except Exception as exc:  # a bug: this unit's failure, its batch goes on
            self._failed(result, metrics, work, "enrich", exc)
            return
        if source.fetched and source.session and work.fetch_id and self._keeps(work):
            kept.append((work.fetch_id, source.session))
        metrics.inc("sessions_fetched", int(source.fetched))
        metrics.inc("enrichments_reused", int(source.detail == REUSED))
        funnel_id = _funnel_of(source, work)
        routed = destinations_for(work.payload_type, self.sinks)
        states = {name: "q" if name in sinks else "d" for name in routed}
        for sink in sinks:
            if not self._takes(sink, work, funnel_id):
                states[sink] = "s"  # filtered out: not an error, never delivered there
                continue
            fresh = replace(work, attempts=0, payload=payload)
            result.deliveries.setdefault(sink, []).append(fresh)
        result.done.append(work.session_id)
        result.events.append(
            Event(
                work,
                "fetch",
                "ok",
                "f",
                "d",
                detail=source.detail,
                duration_s=source.duration_s,
                destinations=states,
            )
        )

    async def _pending(
        self, batch: Sequence[Work], result: StageResult, metrics: MetricsBatch
    ) -> list[tuple[Work, list[str]]]:
        """Each unit with the destinations it is routed to and has not reached yet."""
        pending = await self.state.pending_sinks([w.session_id for w in batch], list(self.sinks))
        todo = []
        for work, sinks in zip(batch, pending, strict=True):
            routed = destinations_for(work.payload_type, self.sinks)
            sinks = [sink for sink in sinks if sink in routed]
            if sinks:
                todo.append((work, sinks))
                continue
            result.skipped.append(work.session_id)
            every = dict.fromkeys(routed, "d")
            result.events.append(Event(work, "fetch", "skipped", "f", "d", destinations=every))
            why = "already delivered to every sink" if routed else "no destination takes its type"
            log.info(why, extra=unit_fields(work))
        metrics.inc("sessions_skipped", len(result.skipped), stage="fetch")
        return todo

    async def _sources(self, works: Sequence[Work]) -> list[_Source | None]:
        """What each unit is built from without a request: a conversion's kept enrichment,
        or its session_error when it names no session. None: its session is to be fetched."""
        sources: list[_Source | None] = [
            _Source.without_session(w.event.session_error or NO_SESSION_ID)
            if w.event is not None and w.event.session_id is None
            else None
            for w in works
        ]
        if self.enrichments is None:
            return sources
        asking = [i for i, w in enumerate(works) if w.event is not None and sources[i] is None]
        found = await self.enrichments.get_many([works[i].fetch_id or "" for i in asking])
        for i, entry in zip(asking, found, strict=True):
            if entry is not None:
                sources[i] = _Source(entry, detail=REUSED)
        return sources

    def _read(
        self,
        work: Work,
        outcome: tuple[bytes, float] | BaseException,
        result: StageResult,
        metrics: MetricsBatch,
    ) -> _Source | None:
        """A fetched body validated and enriched; None when that failed (and was recorded)."""
        if isinstance(outcome, BaseException):
            return self._session_failed(result, metrics, work, "fetch", outcome)
        body, duration_s = outcome
        try:
            raw, session = parse_session(body, work.fetch_id or "")
        except Exception as exc:  # InvalidPayload, or a bug: this unit's failure alone
            return self._session_failed(result, metrics, work, "validate", exc, duration_s)
        try:
            built = enriched(raw, enrich(session))
        except Exception as exc:  # a bug: this unit's failure, its batch goes on
            self._failed(result, metrics, work, "enrich", exc)
            return None
        return _Source(built, duration_s=duration_s, fetched=True)

    def _session_failed(
        self,
        result: StageResult,
        metrics: MetricsBatch,
        work: Work,
        stage: str,
        error: BaseException,
        duration_s: float | None = None,
    ) -> _Source | None:
        """A conversion goes on without a session FunnelFox refuses for good; else _failed."""
        if work.event is not None and isinstance(error, Permanent):
            return _Source.without_session(error.reason, duration_s)
        self._failed(result, metrics, work, stage, error, duration_s)
        return None

    def _build(self, work: Work, source: _Source) -> bytes:
        if work.event is not None:
            return build_conversion_payload(
                work.event, source.session, source.error, work.trigger, self.now()
            )
        assert source.session is not None, "a session's source is always a session"
        return build_session_payload(source.session, work.trigger, self.now())

    def _keeps(self, work: Work) -> bool:
        """Whether a conversion may follow: the run came from a FunnelFox event."""
        return work.event is not None or work.trigger is not None

    async def deliver(
        self,
        sink_name: str,
        batch: Sequence[Work],
        *,
        metrics: MetricsBatch | None = None,
        fetched: Sequence[Event] = (),
    ) -> StageResult:
        """Deliver built payloads to one sink, each session at most once while its record lives.

        With ``metrics`` (a fetch's inline delivery), what it counts is added there and written
        by the caller; ``fetched`` are ledger events recorded first, with the delivery's. With
        ``background``, attempts still under way after its hold are recorded when they end, not
        in the result returned.
        """
        flush = metrics is None
        result = StageResult(events=list(fetched))
        metrics = metrics if metrics is not None else MetricsBatch()
        stage = f"deliver:{sink_name}"
        sink = self.sinks.get(sink_name)
        if sink is None:
            error = StageError(f"sink {sink_name!r} is not configured in this worker")
            for work in batch:
                self._dead(result, metrics, work, stage, "sink_disabled", error)
            await self._record(result, metrics, flush=flush)
            return result
        batch, probe = await self._hold(sink_name, batch, result)
        states = await self.state.claim(sink_name, [w.session_id for w in batch])
        claimed = [w for w, s in zip(batch, states, strict=True) if s == "claimed"]
        field_name = f"d:{sink_name}"
        for work, state in zip(batch, states, strict=True):
            if state == "delivered":
                result.skipped.append(work.session_id)
                result.events.append(Event(work, stage, "skipped", field_name, "d"))
            elif state == "busy":
                # Another worker is delivering it right now; look again once its lease ends.
                # Logged without setting the destination's state, which that worker records;
                # the event names the stage, so the retry is this delivery's, not a refetch.
                result.retries.append((work, self.claim_wait_s))
                due = time.time() + self.claim_wait_s
                result.events.append(Event(work, stage, "busy", next_at=due))
        metrics.inc("sessions_skipped", len(result.skipped), stage=stage)
        attempts = asyncio.ensure_future(self._paced_deliver(sink, claimed))
        if claimed and not await self._waited(sink_name, attempts):
            # Still under way: it finishes (and is recorded) in the background, and this task
            # records what it has and ends, so the process goes on to other destinations' work.
            later = self._settle(sink_name, claimed, attempts, probe, StageResult(), MetricsBatch())
            assert self.background is not None, "only ever not waited for with one"
            self.background.keep(sink_name, later)
            if self.inline is not None:
                self.inline.observe(sink_name, float("inf"))
            log.info(
                "delivery continues in the background",
                extra={"stage": stage, "outcome": "away", "count": len(claimed)},
            )
            await self._record(result, metrics, flush=flush)
            return result
        await self._settle(sink_name, claimed, attempts, probe, result, metrics, flush=flush)
        return result

    async def _waited(self, sink_name: str, attempts: asyncio.Future[list[Outcome]]) -> bool:
        """Wait for a batch's attempts; False: it is still under way after the destination's
        hold (see worker.background), to finish without this task."""
        if self.background is None or self.ledger is None:
            # Without the ledger a retry is published by the task itself: it must wait.
            await asyncio.wait({attempts})
            return True
        done, _ = await asyncio.wait({attempts}, timeout=self.background.wait_s(sink_name))
        return bool(done)

    async def _settle(
        self,
        sink_name: str,
        claimed: Sequence[Work],
        attempts: asyncio.Future[list[Outcome]],
        probe: bool,
        result: StageResult,
        metrics: MetricsBatch,
        *,
        flush: bool = True,
    ) -> None:
        """Record how a batch's attempts went: delivered, retried, held or dead-lettered
        (``metrics`` written too unless the caller writes them later, with more)."""
        stage = f"deliver:{sink_name}"
        outcomes = await attempts
        released, unreachable = [], 0
        for work, outcome in zip(claimed, outcomes, strict=True):
            metrics.observe("delivery_duration_seconds", outcome.duration_s, sink=sink_name)
            if outcome.error is None:
                self._delivered(result, work, stage, outcome.duration_s)
                continue
            released.append(work.session_id)
            unreachable += _unreachable(outcome.error)
            if probe and _unreachable(outcome.error):
                # The breaker's probe found the destination still down: the delivery waits
                # with the others it holds, its retries untouched (a 410 is not this).
                self._probe_failed(result, sink_name, work, outcome)
            else:
                self._failed(result, metrics, work, stage, outcome.error, outcome.duration_s)
        metrics.inc("sessions_delivered", len(result.done), sink=sink_name)
        await self.state.settle(sink_name, result.done, released)
        breaker = self.breakers.get(sink_name)
        if breaker is not None:
            await breaker.report(len(result.done), unreachable, time.time())
        await self._record(result, metrics, flush=flush)

    def _delivered(self, result: StageResult, work: Work, stage: str, duration_s: float) -> None:
        field_name = _ledger_field(stage, "d")[0]
        result.done.append(work.session_id)
        result.events.append(Event(work, stage, "ok", field_name, "d", duration_s=duration_s))
        log.info(
            "delivered",
            extra={
                **unit_fields(work),
                "stage": stage,
                "attempt": work.attempts + 1,
                "duration_s": round(duration_s, 4),
                "outcome": "delivered",
            },
        )

    def _probe_failed(
        self, result: StageResult, sink_name: str, work: Work, outcome: Outcome
    ) -> None:
        """Hold a failed probe's delivery like the others while the breaker is open: no
        attempt counted, the ledger shows it waiting, with what the destination answered."""
        breaker = self.breakers[sink_name]
        assert outcome.error is not None, "only a failed probe is held"
        stage, due = f"deliver:{sink_name}", time.time() + breaker.probe_s
        result.retries.append((work, breaker.probe_s))
        result.events.append(
            Event(
                work,
                stage,
                "breaker_open",
                f"d:{sink_name}",
                "q",
                detail=describe_failure(outcome.error),
                duration_s=outcome.duration_s,
                next_at=due,
            )
        )
        log.info(
            "probe failed; held while the breaker is open",
            extra={
                **unit_fields(work),
                "stage": stage,
                "outcome": "breaker_open",
                "delay_s": breaker.probe_s,
                "error": self.scrub(str(outcome.error)),
            },
        )

    def _takes(self, sink_name: str, work: Work, funnel_id: str | None) -> bool:
        """Whether a destination's filters take this unit (its funnel, event type, sandbox).

        A conversion is filtered by its own type, which it always has: its trigger may be
        missing (an enrich_batch item with an event and no trigger) and would then read as
        onboarding.completed. A session, whose payload type is always session.enriched, is
        filtered by the event that started it.
        """
        trigger = work.trigger or {}
        event_type = work.payload_type if work.event is not None else trigger.get("type")
        return self.sinks[sink_name].filters.take(funnel_id, event_type, trigger.get("is_sandbox"))

    async def _hold(
        self, sink_name: str, batch: Sequence[Work], result: StageResult
    ) -> tuple[list[Work], bool]:
        """What may be attempted now, and whether it is the breaker's probe; the rest waits
        in the ledger, its retries untouched.

        An open breaker lets one probe through per period; a paused destination none. The
        destination's rate limit hands back what it cannot serve soon, and a destination with
        as many batches away in the background as it may have gets none attempted.
        """
        go, wait_s, why, probe = list(batch), 0.0, "", False
        if self.background is not None and self.background.full(sink_name):
            # Its earlier batches are still under way here: no attempt now, none used up.
            self._defer(result, sink_name, go, self.background.retry_s, "in_flight")
            return [], False
        breaker = self.breakers.get(sink_name)
        if breaker is not None and go:
            gate = await breaker.gate()
            probe = gate == "probe"
            if gate != "closed":
                keep = 1 if probe else 0
                why = "paused" if gate == "paused" else "breaker_open"
                go, wait_s = go[:keep], breaker.probe_s
                self._defer(result, sink_name, batch[keep:], wait_s, why)
        limit = self.sink_limits.get(sink_name)
        if limit is not None and go:
            reservation = await limit.reserve(len(go))
            later = reservation.delay_s(reservation.granted)
            self._defer(result, sink_name, go[reservation.granted :], later, "rate_limited")
            self._delays[sink_name] = [reservation.delay_s(i) for i in range(reservation.granted)]
            go = go[: reservation.granted]
        return go, probe

    def _defer(
        self, result: StageResult, sink_name: str, works: Sequence[Work], delay_s: float, why: str
    ) -> None:
        """Wait ``delay_s`` without an attempt (not a failure: the destination said wait)."""
        stage, due = f"deliver:{sink_name}", time.time() + delay_s
        for work in works:
            result.retries.append((work, delay_s))
            result.events.append(Event(work, stage, why, f"d:{sink_name}", "q", next_at=due))

    async def _paced_deliver(self, sink: Sink, works: Sequence[Work]) -> list[Outcome]:
        """Deliver, each at the time its rate-limit slot starts (all at once without a limit)."""
        delays = self._delays.pop(sink.name, None)
        if not works:
            return []
        deliveries = [delivery_of(w) for w in works]
        if not delays or max(delays) <= 0:
            return await sink.deliver(deliveries)

        async def at(delay_s: float, delivery: Delivery) -> Outcome:
            await asyncio.sleep(delay_s)
            [outcome] = await sink.deliver([delivery])
            return outcome

        return list(
            await asyncio.gather(*(at(d, x) for d, x in zip(delays, deliveries, strict=False)))
        )

    async def refuse(self, refusals: Sequence[Refusal], stage: str) -> StageResult:
        """Dead-letter what a message carried that cannot be worked on (never retried)."""
        result, metrics = StageResult(), MetricsBatch()
        for refusal in refusals:
            work = Work(refusal.session_id, 1, trigger=refusal.trigger, event=refusal.event)
            self._dead(result, metrics, work, stage, refusal.reason, StageError(refusal.error))
        # Only real session ids have a ledger entry; a message with none has its dead letter.
        result.events = [e for e in result.events if not e.work.session_id.startswith("(")]
        await self._record(result, metrics)
        return result

    async def _pace(self, todo: list[tuple[Work, list[str]]], result: StageResult) -> list[float]:
        """Delays that keep the fleet under FUNNELFOX_RATE_LIMIT_PER_S; the rest go back.

        Sessions beyond what the limit allows soon are handed back to the queue (not counted
        as attempts) rather than held here, so a worker slot never idles long on the limit.
        """
        if self.rate_limit is None or not todo:
            return [0.0] * len(todo)
        reservation = await self.rate_limit.reserve(len(todo))
        later = reservation.delay_s(reservation.granted)
        for work, _ in todo[reservation.granted :]:
            result.retries.append((work, later))
            # Not an attempt: it waits its turn, still queued.
            result.events.append(
                Event(work, "fetch", "deferred", "f", "q", next_at=time.time() + later)
            )
        del todo[reservation.granted :]
        return [reservation.delay_s(i) for i in range(len(todo))]

    async def _fetch_one(
        self, work: Work, delay_s: float, timings: list[float]
    ) -> tuple[bytes, float]:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        started = time.perf_counter()
        try:
            body = await self.funnelfox.get_session(work.fetch_id or "")
            return body, time.perf_counter() - started
        finally:
            timings.append(time.perf_counter() - started)

    async def _record(
        self, result: StageResult, metrics: MetricsBatch, *, flush: bool = True
    ) -> None:
        """Dead letters first, then the ledger (and the retries it schedules), then metrics
        (unless the caller flushes them later, with more)."""
        await self.dead_letters.add(result.dead, result.dead_payloads)
        if self.ledger is not None:
            recorded = await self.ledger.record(result.events, result.retries)
            result.retries_scheduled = True
            observe_latencies(result.events, recorded, metrics, time.time())
        if flush:
            await self._flush(metrics)

    async def _flush(self, metrics: MetricsBatch) -> None:
        if self.metrics_redis is not None:
            await metrics.flush(self.metrics_redis)

    def _failed(
        self,
        result: StageResult,
        metrics: MetricsBatch,
        work: Work,
        stage: str,
        error: BaseException,
        duration_s: float | None = None,
    ) -> None:
        """Schedule another attempt, or dead-letter: the one place that decides."""
        if not isinstance(error, EnricherError):
            # A bug or an unmapped library error: keep the session, and say so loudly.
            log.error(
                "internal error",
                exc_info=error,
                extra={**unit_fields(work), "stage": stage},
            )
            error = InternalError(f"internal error: {type(error).__name__}: {error}")
        attempt = work.retried()
        if isinstance(error, UpstreamAuthFailed) and not self._auth_warned:
            self._auth_warned = True
            log.error(
                "FunnelFox refused FUNNELFOX_SECRET (401/403): every fetch will fail "
                "until it is fixed; sessions are retried, then dead-lettered"
            )
        if isinstance(error, Retryable) and self.policy.can_retry(attempt.attempts):
            delay = self.policy.delay_s(attempt.attempts, error.retry_after_s)
            result.retries.append((attempt, delay))
            result.events.append(
                Event(
                    attempt,
                    stage,
                    "retry",
                    *_ledger_field(stage, "r"),
                    detail=describe_failure(error),
                    duration_s=duration_s,
                    next_at=time.time() + delay,
                )
            )
            metrics.inc("retries", stage=stage, reason=error.reason)
            log.info(
                "will retry",
                extra={
                    **unit_fields(work),
                    "stage": stage,
                    "attempt": attempt.attempts,
                    "outcome": error.reason,
                    "delay_s": round(delay, 3),
                    "error": self.scrub(str(error)),
                },
            )
            return
        reason = error.exhausted_reason if isinstance(error, Retryable) else error.reason
        self._dead(result, metrics, attempt, stage, reason, error, duration_s)

    def _dead(
        self,
        result: StageResult,
        metrics: MetricsBatch,
        work: Work,
        stage: str,
        reason: str,
        error: BaseException,
        duration_s: float | None = None,
    ) -> None:
        result.events.append(
            Event(
                work,
                stage,
                f"dead:{reason}",
                *_ledger_field(stage, "x"),
                detail=describe_failure(error),
                duration_s=duration_s,
            )
        )
        letter = DeadLetter(
            session_id=work.session_id,
            stage=stage,
            reason=reason,
            error=self.scrub(str(error)),
            attempts=work.attempts,
            first_seen_at=work.first_seen_at,
            failed_at=time.time(),
            trigger=work.trigger,
            event=None if work.event is None else work.event.to_message(),
        )
        result.dead.append(letter)
        result.dead_payloads.append(work.payload)
        metrics.inc("dead_letters", stage=stage, reason=reason)
        log.warning(
            "dead-lettered",
            extra={
                **unit_fields(work),
                "stage": stage,
                "attempt": work.attempts,
                "outcome": reason,
                "error": letter.error,
            },
        )


async def _hand_over(result: StageResult, on_ready: Callable[[StageResult], None]) -> None:
    """Give the task layer what it must publish, if anything."""
    unscheduled = not result.retries_scheduled and (result.retries or result.delivery_retries)
    if result.deliveries or unscheduled:
        # In a thread: publishing blocks, and fetches still waiting for their rate-limit slot
        # must start on time, not all at once when the loop is free again.
        await asyncio.to_thread(on_ready, result)


def unit_fields(work: Work) -> dict[str, Any]:
    """A unit's ids for a log line: its session, and a conversion's event id."""
    if work.event is None:
        return {"session_id": work.session_id}
    return {"session_id": work.event.session_id, "event_id": work.session_id}


def delivery_of(work: Work) -> Delivery:
    """What a sink is given: the payload, its session, and a conversion's event id."""
    if work.event is None:
        return Delivery(work.session_id, work.payload or b"")
    return Delivery(work.event.session_id or "", work.payload or b"", event_id=work.session_id)


_STATUS = re.compile(r"answered (\d{3})")


def describe_failure(error: BaseException) -> str:
    """What the ledger's attempt log says about a failure: a status code, else its kind."""
    found = _STATUS.search(str(error))
    return found.group(1) if found else type(error).__name__


def _funnel_of(source: _Source, work: Work) -> str | None:
    """The funnel of a unit's session, for the destinations' filters; for a conversion without
    its session, the funnel its event names (its trigger's), so funnel_ids still route it."""
    if source.session is None:
        funnel_id = (work.trigger or {}).get("funnel_id")
    else:
        funnel_id = orjson.loads(source.session.session).get("funnel_id")
    return funnel_id if isinstance(funnel_id, str) else None


def _unreachable(error: BaseException) -> int:
    """1 when a delivery failed because the destination is not taking anything (a timeout,
    a refused connection, 408/429/5xx); its explicit answers (410, 4xx) are not that, nor
    are our own bugs."""
    return int(isinstance(error, Retryable) and not isinstance(error, InternalError))


def _ledger_field(stage: str, value: str) -> tuple[str, str]:
    """The ledger field a stage's outcome sets: the fetch's, or one destination's."""
    if stage.startswith("deliver:"):
        return f"d:{stage.removeprefix('deliver:')}", value
    return "f", value  # fetch, validate and enrich all decide the fetch's fate


def observe_latencies(
    events: Sequence[Event], recorded: Sequence[Recorded], metrics: MetricsBatch, now: float
) -> None:
    """Accepted → delivered per destination, and from the FunnelFox event when known."""
    for event, outcome in zip(events, recorded, strict=True):
        if event.outcome != "ok" or not event.stage.startswith("deliver:"):
            continue
        sink = event.stage.removeprefix("deliver:")
        metrics.observe("delivery_latency_seconds", now - outcome.accepted_at, sink=sink)
        created_at = (event.work.trigger or {}).get("created_at")
        if isinstance(created_at, int | float):
            metrics.observe("event_delivery_latency_seconds", now - created_at, sink=sink)
