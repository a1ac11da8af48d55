"""Every name this product gives things in Redis: its queues and its keys, one owner for each.

Queues (Celery's, on the broker's Redis):
    enrich                       fetch, validate, enrich (``enrich_session``, ``enrich_batch``)
    deliver.<sink>               one sink's deliveries, so a slow sink never holds up another

Keys (the worker's own state, all under ``ffe:``); ``<id>`` is a unit of work's id, a session
id or a conversion's event id (``worker.conversions``):
    ffe:delivered:<sink>:<id>    a sink took the unit; lives DEDUPE_TTL_S
    ffe:claim:<sink>:<id>        held while one worker delivers it, so two never race
    ffe:dlq                      dead letters: hash of ``<stage>|<id>`` → JSON record
    ffe:dlq:payload              payloads kept for a replay: same fields → payload bytes
    ffe:metrics                  the fleet's counters and histogram buckets (a hash)
    ffe:ratelimit:funnelfox      the fleet's FunnelFox rate limit (GCRA state)
    ffe:event:<event id>         an ingress event marker (pending, then enqueued)
    ffe:backfill:<digest>        where one backfill stands
    ffe:sinks                    the fleet's destinations: name → queue (workers register)
    ffe:ledger:<id>              one accepted unit: its state and attempts (worker.ledger)
    ffe:ledger:<id>:t            its trigger (a conversion's: and its event), while unfinished
    ffe:ledger:<id>:c            a session's conversions: event ids by acceptance time (bounded)
    ffe:enriched:<session id>    a built enrichment kept for the session's conversions
    ffe:ledger:open              unfinished sessions by acceptance time (sorted set)
    ffe:ledger:idle              unfinished sessions by when progress is next expected
    ffe:ledger:counts            sessions per state (unfinished), finished totals
    ffe:due                      scheduled retries: ``<stage>|<id>`` by due time (sorted set)
    ffe:due:work                 what each scheduled retry carries (its task item, JSON)
    ffe:reconcile:lock           held by the one worker reconciling at a time
    ffe:breaker:<destination>    its circuit breaker (failures in a row, open since) and pause
    ffe:breaker:<destination>:probe   the one probe delivery let through per period
    ffe:ratelimit:destination:<destination>   its fleet-wide rate limit

Channels:
    ffe:replication-probe        published to (never subscribed) before a WAIT for replicas

kombu's own (read, never written, by this product):
    unacked                      messages taken by a worker and not yet acknowledged
"""

from __future__ import annotations

PREFIX = "ffe:"

FETCH_QUEUE = "enrich"

# kombu's Redis transport keeps unacknowledged messages in this hash (its default name).
KOMBU_UNACKED = "unacked"

DEAD_LETTERS = f"{PREFIX}dlq"
DEAD_LETTER_PAYLOADS = f"{PREFIX}dlq:payload"
METRICS = f"{PREFIX}metrics"
FUNNELFOX_RATE_LIMIT = f"{PREFIX}ratelimit:funnelfox"
EVENT_MARKER_PREFIX = f"{PREFIX}event:"
BACKFILL_PREFIX = f"{PREFIX}backfill:"


def delivery_queue(sink: str) -> str:
    """The queue a sink's deliveries wait in."""
    return f"deliver.{sink}"


def delivered_key(sink: str, session_id: str) -> str:
    """The record that ``sink`` has taken ``session_id``."""
    return f"{PREFIX}delivered:{sink}:{session_id}"


def claim_key(sink: str, session_id: str) -> str:
    """The lease a worker holds while it delivers ``session_id`` to ``sink``."""
    return f"{PREFIX}claim:{sink}:{session_id}"


def event_key(event_id: str) -> str:
    """The ingress's marker of one FunnelFox event."""
    return EVENT_MARKER_PREFIX + event_id


def backfill_key(digest: str) -> str:
    """Where the backfill of one filter (by its digest) stands."""
    return BACKFILL_PREFIX + digest


# Destinations the fleet's workers deliver to: name → queue, written by each worker at start,
# so the console and the metrics reader know them without the workers' settings.
SINKS = f"{PREFIX}sinks"

# A PUBLISH here is a write that replicates without touching data (see
# worker.redis_clients.wait_for_replicas); nothing subscribes to it.
REPLICATION_PROBE = f"{PREFIX}replication-probe"

LEDGER_OPEN = f"{PREFIX}ledger:open"
LEDGER_IDLE = f"{PREFIX}ledger:idle"
LEDGER_COUNTS = f"{PREFIX}ledger:counts"
DUE = f"{PREFIX}due"
DUE_WORK = f"{PREFIX}due:work"
RECONCILE_LOCK = f"{PREFIX}reconcile:lock"
# A header on every message this product publishes: when it entered its queue (Unix seconds),
# so the reconciler can tell a session still waiting in a queue from one whose message is gone.
QUEUED_AT_HEADER = "ffe_queued_at"


def ledger_key(session_id: str) -> str:
    """The ledger entry of one session."""
    return f"{PREFIX}ledger:{session_id}"


def ledger_trigger_key(session_id: str) -> str:
    """The trigger of an unfinished session (deleted when it finishes)."""
    return f"{PREFIX}ledger:{session_id}:t"


def ledger_conversions_key(session_id: str) -> str:
    """The conversion events accepted for one session (a sorted set of event ids)."""
    return f"{PREFIX}ledger:{session_id}:c"


def enriched_key(session_id: str) -> str:
    """A session's body and enrichment, kept for its conversions (worker.enrichments)."""
    return f"{PREFIX}enriched:{session_id}"


def due_member(stage: str, session_id: str) -> str:
    """A scheduled retry: which stage, which session."""
    return f"{stage}|{session_id}"


def breaker_key(destination: str) -> str:
    """One destination's circuit breaker and pause (worker.breaker)."""
    return f"{PREFIX}breaker:{destination}"


def breaker_probe_key(destination: str) -> str:
    """The token of the one probe delivery an open breaker lets through per period."""
    return f"{PREFIX}breaker:{destination}:probe"


def destination_rate_limit_key(destination: str) -> str:
    """One destination's fleet-wide rate limit (GCRA state)."""
    return f"{PREFIX}ratelimit:destination:{destination}"
