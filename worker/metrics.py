"""Pipeline metrics shared by every worker process on every host, kept in Redis.

Workers add to counters and histogram buckets in one pipelined round trip per batch; the
``web`` process's ``/metrics`` reads them back (with queue depths and the dead-letter count)
and renders Prometheus text. Prometheus' own multiprocess mode covers one host only; this
covers a fleet.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from worker.breaker import read_state
from worker.fleet import registered_sinks
from worker.keys import (
    DEAD_LETTERS,
    FETCH_QUEUE,
    KOMBU_UNACKED,
    LEDGER_COUNTS,
    LEDGER_OPEN,
    METRICS,
    delivery_queue,
)
from worker.ledger import FINISHED, UNFINISHED
from worker.redis_clients import text

KEY = METRICS
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# From acceptance to delivery: milliseconds on the live path, days through retries.
LATENCY_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    7200.0,
    36000.0,
    108000.0,
)

COUNTERS = {
    "sessions_fetched": ("Sessions fetched from FunnelFox and validated", ()),
    "sessions_delivered": ("Sessions delivered, per sink", ("sink",)),
    "sessions_skipped": ("Sessions not delivered again: already delivered", ("stage",)),
    "dead_letters": ("Sessions dead-lettered, per stage and reason", ("stage", "reason")),
    "retries": (
        "Attempts scheduled again, per stage and the failure's reason",
        ("stage", "reason"),
    ),
    "enrichments_reused": (
        "Conversions built from their session's kept enrichment: a FunnelFox request saved",
        (),
    ),
    "sessions_reconciled": (
        "Sessions published again by the reconciler: their messages were lost",
        (),
    ),
}
HISTOGRAMS = {
    "fetch_duration_seconds": ("Time of one GET /sessions/{id}", (), BUCKETS),
    "delivery_duration_seconds": (
        "Time of one delivery attempt, per sink",
        ("sink",),
        BUCKETS,
    ),
    "delivery_latency_seconds": (
        "From a session's acceptance to its delivery, per sink",
        ("sink",),
        LATENCY_BUCKETS,
    ),
    "event_delivery_latency_seconds": (
        "From the FunnelFox event's created_at to the delivery, per sink (whole seconds)",
        ("sink",),
        LATENCY_BUCKETS,
    ),
}


def _field(name: str, labels: Iterable[tuple[str, str]]) -> str:
    return name + "|" + ",".join(f"{k}={v}" for k, v in labels)


Labels = tuple[tuple[str, str], ...]


def _parse(field: str) -> tuple[str, Labels]:
    name, _, rest = field.partition("|")
    pairs = (pair.split("=", 1) for pair in rest.split(",") if pair)
    return name, tuple(sorted((key, value) for key, value in pairs))


class MetricsBatch:
    """What one stage run adds to the fleet's metrics, written in one round trip."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._sums: defaultdict[str, float] = defaultdict(float)

    def inc(self, name: str, by: int = 1, **labels: str) -> None:
        """Add to a counter."""
        if by:
            self._counts[_field(name, sorted(labels.items()))] += by

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """Record one histogram observation."""
        base = sorted(labels.items())
        buckets = HISTOGRAMS[name][2]
        index = bisect.bisect_left(buckets, seconds)
        bound = str(buckets[index]) if index < len(buckets) else "+Inf"
        self._counts[_field(name + "_bucket", [*base, ("le", bound)])] += 1
        self._counts[_field(name + "_count", base)] += 1
        self._sums[_field(name + "_sum", base)] += seconds

    async def flush(self, client: aioredis.Redis) -> None:
        """Add everything to the shared hash; nothing is sent when nothing happened."""
        if not self._counts and not self._sums:
            return
        async with client.pipeline(transaction=False) as pipe:
            for field, count in self._counts.items():
                pipe.hincrby(KEY, field, count)
            for field, total in self._sums.items():
                pipe.hincrbyfloat(KEY, field, total)
            await pipe.execute()
        self._counts.clear()
        self._sums.clear()

    def flush_sync(self, client: redis.Redis) -> None:
        """The same from a blocking client (the worker's main process)."""
        if not self._counts and not self._sums:
            return
        with client.pipeline(transaction=False) as pipe:
            for field, count in self._counts.items():
                pipe.hincrby(KEY, field, count)
            for field, total in self._sums.items():
                pipe.hincrbyfloat(KEY, field, total)
            pipe.execute()
        self._counts.clear()
        self._sums.clear()


class FleetCollector(Collector):
    """Reads the shared hash and the queues at scrape time."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        """Every pipeline metric, as Prometheus families."""
        raw: dict[Any, Any] = self._client.hgetall(KEY)
        values = {_parse(k.decode()): float(v) for k, v in raw.items()}
        yield from self._counters(values)
        yield from self._histograms(values)
        depth = GaugeMetricFamily(
            "funnelfox_queue_depth", "Messages waiting in each queue", labels=["queue"]
        )
        for queue in queues(self._client):
            depth.add_metric([queue], self._client.llen(queue))
        yield depth
        yield GaugeMetricFamily(
            "funnelfox_unacked_messages",
            "Messages taken by a worker and not yet acknowledged",
            value=self._client.hlen(KOMBU_UNACKED),
        )
        yield GaugeMetricFamily(
            "funnelfox_dead_letters_stored",
            "Records in the dead-letter store",
            value=self._client.hlen(DEAD_LETTERS),
        )
        yield from self._ledger()
        yield from self._breakers()

    def _breakers(self) -> Iterator[Metric]:
        opened = GaugeMetricFamily(
            "funnelfox_destination_open",
            "1 while a destination's deliveries are held: its breaker is open, or it is paused",
            labels=["destination"],
        )
        for name in registered_sinks(self._client):
            state = read_state(self._client, name)
            opened.add_metric([name], 1 if state["open"] or state["paused"] else 0)
        yield opened

    def _ledger(self) -> Iterator[Metric]:
        counts = {text(k): int(v) for k, v in self._client.hgetall(LEDGER_COUNTS).items()}
        unfinished = GaugeMetricFamily(
            "funnelfox_sessions", "Unfinished sessions in the ledger, per state", labels=["state"]
        )
        for state in UNFINISHED:
            unfinished.add_metric([state], max(0, counts.get(state, 0)))
        yield unfinished
        finished = CounterMetricFamily(
            "funnelfox_sessions_finished",
            "Sessions that reached a final state in the ledger",
            labels=["state"],
        )
        for state in FINISHED:
            finished.add_metric([state], counts.get(f"finished:{state}", 0))
        yield finished
        oldest = self._client.zrange(LEDGER_OPEN, 0, 0, withscores=True)
        yield GaugeMetricFamily(
            "funnelfox_oldest_unfinished_session_age_seconds",
            "Age of the oldest session accepted and neither delivered nor dead-lettered",
            value=max(0.0, time.time() - float(oldest[0][1])) if oldest else 0.0,
        )

    @staticmethod
    def _counters(values: dict[tuple[str, Labels], float]) -> Iterator[Metric]:
        for name, (doc, label_names) in COUNTERS.items():
            family = CounterMetricFamily(f"funnelfox_{name}", doc, labels=list(label_names))
            for (metric, pairs), value in values.items():
                if metric == name:
                    labels = dict(pairs)
                    family.add_metric([labels.get(n, "") for n in label_names], value)
            if not label_names and not family.samples:
                family.add_metric([], 0)  # a counter without labels exists from the start
            yield family

    @staticmethod
    def _histograms(values: dict[tuple[str, Labels], float]) -> Iterator[Metric]:
        for name, (doc, label_names, bounds) in HISTOGRAMS.items():
            family = HistogramMetricFamily(f"funnelfox_{name}", doc, labels=list(label_names))
            series: dict[tuple[str, ...], dict[str, float]] = {}
            sums: dict[tuple[str, ...], float] = {}
            for (metric, pairs), value in values.items():
                labels = dict(pairs)
                key = tuple(labels.get(n, "") for n in label_names)
                if metric == name + "_bucket":
                    series.setdefault(key, {})[labels["le"]] = value
                elif metric == name + "_sum":
                    sums[key] = value
            for key, buckets in series.items():
                cumulative, running = [], 0.0
                for bound in (*map(str, bounds), "+Inf"):
                    running += buckets.get(bound, 0.0)
                    cumulative.append((bound, running))
                family.add_metric(list(key), cumulative, sums.get(key, 0.0))
            yield family


def queues(client: redis.Redis) -> list[str]:
    """The fetch queue and every registered destination's queue."""
    return [FETCH_QUEUE, *(delivery_queue(name) for name in registered_sinks(client))]


def render(client: redis.Redis) -> bytes:
    """The Prometheus text exposition of the fleet's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(client))
    return generate_latest(registry)
