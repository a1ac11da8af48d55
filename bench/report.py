"""The results table, the ratios, the machine they were measured on, and ``bench/RESULTS.md``."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench.contestants import LEDGER_ROUND
from bench.harness import ROOT
from bench.live import LiveOutcome
from bench.live_report import floor_ratios, live_details, live_problems, live_table, live_targets
from bench.measure import Outcome

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
RSS_TARGET_MIB = 300
LEDGER_BUDGET = 0.15
_VERSIONS = (
    "celery",
    "kombu",
    "redis",
    "httpx",
    "httpx-aiohttp",
    "aiohttp",
    "uvloop",
    "uvicorn",
    "starlette",
    "pydantic",
    "orjson",
    "psutil",
)

METHOD = """\
- **ours**: ids queued with `python -m worker enqueue -` while no worker runs, then the Procfile's
  `worker:` line with only REDIS_URL, FUNNELFOX_API_URL, FUNNELFOX_SECRET, WEBHOOK_URL and
  WEBHOOK_SECRET set (plus PATH and HOME): the shipped defaults otherwise.
- **textbook**: `bench/textbook.py`, one task per id (sync `httpx.Client` per process, GET then a
  Standard Webhooks-signed POST), acks_late, `--pool threads -c 32`.
- **no-op**: `bench/noop.py`, a task that does nothing (acks_late, prefetch 1, task events on, no
  result backend), prefork ×2 and threads ×32.
- **floor**: `bench/floor.py`, no broker: one asyncio (uvloop) + aiohttp process per core, 100
  sessions in flight each, doing the worker's own per-session work with the project's functions
  (GET, `parse_session`, `enrich`, `build_payload`, `WebhookSink.headers`, POST); no delivery
  record, no retry. Measured like ours (from its ` ready.` line, CPU of its process tree).
- Every worker runs with the Procfile's flags (`--loglevel=INFO --without-gossip
  --without-mingle`). The two references drop Celery's log line per task received and done, and
  httpx's per request (ours drops httpx's itself): logging them cost the textbook recipe about
  2 ms per session here, which would flatter the ratios.
- Sessions/s for ours and textbook run from the first `GET /sessions/{id}` the simulator saw to the
  last POST the receiver accepted (both `time.monotonic()`, one clock machine-wide on Linux).
  No-op tasks/s run from the first poll (every 10 ms) that finds the queue shorter than N to the
  first of two polls finding it empty and kombu's `unacked` hash empty.
- CPU is user + system of the worker's whole process tree between its ` ready.` line and its
  stop (start-up excluded), divided by the sessions delivered. Peak RSS is the tree's summed RSS,
  sampled every 50 ms (pages a prefork parent shares with its children counted once per
  process: an upper bound); peak PSS, sampled every 250 ms, splits shared pages between them.
- Same Redis (its own database, flushed before each run), simulator and receiver for every run;
  all three share the machine's cores with the worker measured.
- **live**: per upstream latency and rate, a flushed database, the Procfile's `web:` line (through
  `sh -c`, on a free `$PORT`) and `worker:` line with the same five variables, 40 warm-up events
  delivered and forgotten, then `python -m bench.loadgen` in a process of its own: an open-loop
  generator (one timer callback posts whatever is due over up to 512 keep-alive connections,
  see `bench/rawhttp.py`; SCHED_FIFO when allowed, else nice -10) sending `onboarding.completed`
  events with distinct event and session ids, `Fox-Secret-Key` set. POST → delivered is the
  receiver's arrival time of the session's first accepted delivery minus the generator's POST
  time (both `time.monotonic()`). Percentiles are nearest-rank over every event answered 202;
  one not delivered by the deadline counts as infinitely late, and such a percentile is shown
  as "> x", x being the same percentile with each undelivered event at its age at the deadline
  (a lower bound). An event with no answer within 10 s counts as refused (web may still queue
  it later, so a backlog can outnumber the undelivered events). A step stops early
  once more than 1 % of its planned events were posted over 1 s ago and are still undelivered
  (p99 > 1 s is then certain), after at least 5 s; the deadline is 10 s after the last POST
  (2 s for a stopped step). **Sustained**: ran its whole duration, nothing refused, nothing
  lost, p99 ≤ 1 s, and the generator on time (its p99 lag ≤ 25 ms). **Lost** is only counted
  when the broker is empty at the deadline; otherwise the undelivered events are still queued
  ("?").
  Worker CPU per session is the worker tree's CPU from the first POST to the deadline over the
  sessions delivered; web's is per event answered 202."""


def _fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(outcomes: Sequence[Outcome]) -> str:
    """The results as a markdown table, one row per contestant and latency."""
    rows = [
        "| contestant | pool | upstream | sessions/s | CPU ms/session | Redis CPU ms/session "
        "| peak RSS MiB | peak PSS MiB | delivered/N | dup |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        rows.append(
            f"| {o.contestant} | {o.pool} | {o.latency_ms:g} ms | {_fmt(o.rate)} "
            f"| {_fmt(o.cpu_ms_per_item, 2)} | {_fmt(o.redis_cpu_ms_per_item, 3)} "
            f"| {_fmt(o.peak_rss_mib)} | {_fmt(o.peak_pss_mib)} "
            f"| {o.delivered}/{o.n} | {o.duplicates} |"
        )
    return "\n".join(rows)


def _find(outcomes: Sequence[Outcome], contestant: str, latency: float) -> Outcome | None:
    for o in outcomes:
        if o.contestant == contestant and o.latency_ms == latency:
            return o
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def ratios(outcomes: Sequence[Outcome]) -> list[str]:
    """Ours against each reference, per latency."""
    lines = []
    for latency in sorted({o.latency_ms for o in outcomes}):
        ours = _find(outcomes, "ours", latency)
        if ours is None:
            continue
        parts = []
        textbook = _find(outcomes, "textbook", latency)
        if textbook is not None:
            speed = _ratio(ours.rate, textbook.rate)
            cpu = _ratio(textbook.cpu_ms_per_item, ours.cpu_ms_per_item)
            parts.append(f"ours/textbook {_fmt(speed, 2)}× sessions/s, {_fmt(cpu, 2)}× less CPU")
        for o in outcomes:
            if o.latency_ms == latency and o.contestant.startswith("no-op"):
                parts.append(f"ours/{o.contestant} {_fmt(_ratio(ours.rate, o.rate), 2)}×")
        cost = ledger_cost(outcomes, latency)
        if cost is not None:
            parts.append(cost.describe())
        if parts:
            lines.append(f"- {latency:g} ms: " + "; ".join(parts))
    return lines


@dataclass(frozen=True)
class LedgerCost:
    """The worker with and without the ledger, paired round by round at one latency.

    The machine's noise between two runs minutes apart is as large as the ledger's cost, so the
    pairs run alternately (on/off, off/on, on/off, …) and their medians are the figures.
    """

    pairs: list[tuple[Outcome, Outcome]]  # (on, off)

    def _median(self, on_off: Callable[[Outcome], float | None]) -> float | None:
        values = [_ratio(on_off(on), on_off(off)) for on, off in self.pairs]
        known = [value for value in values if value is not None]
        return statistics.median(known) if known else None

    @property
    def rate(self) -> float | None:
        """Median sessions/s with the ledger over without it."""
        return self._median(lambda o: o.rate)

    def describe(self) -> str:
        """One line for the Ratios section."""
        each = ", ".join(_fmt(_ratio(on.rate, off.rate), 2) for on, off in self.pairs)
        worker = self._median(lambda o: o.cpu_ms_per_item)
        server = self._median(lambda o: o.redis_cpu_ms_per_item)
        both = self._median(
            lambda o: (
                None
                if o.cpu_ms_per_item is None or o.redis_cpu_ms_per_item is None
                else o.cpu_ms_per_item + o.redis_cpu_ms_per_item
            )
        )
        return (
            f"ledger on/off over {len(self.pairs)} alternating round(s): sessions/s {each} → "
            f"median {_fmt(self.rate, 2)}×; CPU per session (medians) worker {_fmt(worker, 2)}×, "
            f"Redis {_fmt(server, 2)}×, both {_fmt(both, 2)}×"
        )


def ledger_cost(outcomes: Sequence[Outcome], latency: float) -> LedgerCost | None:
    """Each round's run with the ledger beside the same round's without it."""

    def runs(name: str) -> list[Outcome]:
        return [
            o
            for o in outcomes
            if o.latency_ms == latency
            and (o.contestant == name or o.contestant.startswith(name + LEDGER_ROUND))
            and o.rate is not None
        ]

    pairs = list(zip(runs("ours"), runs("ours, no ledger"), strict=False))
    return LedgerCost(pairs) if pairs else None


def ledger_targets(outcomes: Sequence[Outcome]) -> list[str]:
    """The ledger's budget: it costs at most 15 % of the bulk throughput."""
    lines = []
    for latency in sorted({o.latency_ms for o in outcomes}):
        cost = ledger_cost(outcomes, latency)
        if cost is None or cost.rate is None:
            continue
        met = cost.rate >= 1 - LEDGER_BUDGET
        lines.append(
            f"- {latency:g} ms: ledger costs ≤ {LEDGER_BUDGET:.0%} of sessions/s (median on/off "
            f"over {len(cost.pairs)} round(s) ≥ {1 - LEDGER_BUDGET:.2f}): {_fmt(cost.rate, 2)}× → "
            + ("met" if met else "NOT met")
        )
    return lines


def targets(outcomes: Sequence[Outcome]) -> list[str]:
    """The bulk targets (ours against the textbook worker, peak memory), each met or not."""
    lines = []
    for latency, factor in ((50.0, 2.0), (0.0, 1.0)):
        ours, textbook = _find(outcomes, "ours", latency), _find(outcomes, "textbook", latency)
        if ours is None or textbook is None:
            continue
        speed = _ratio(ours.rate, textbook.rate)
        met = speed is not None and speed >= factor and ours.delivered == ours.n
        lines.append(
            f"- {latency:g} ms: ours ≥ {factor:g}× textbook: {_fmt(speed, 2)}× → "
            + ("met" if met else "NOT met")
        )
    for ours in (o for o in outcomes if o.contestant == "ours"):
        met = 0 < ours.peak_rss_mib < RSS_TARGET_MIB
        lines.append(
            f"- {ours.latency_ms:g} ms: peak RSS < {RSS_TARGET_MIB} MiB: "
            f"{_fmt(ours.peak_rss_mib)} MiB summed over {ours.peak_processes} processes → "
            + ("met" if met else "NOT met")
            + f" (PSS, shared pages counted once: {_fmt(ours.peak_pss_mib)} MiB)"
        )
    return lines


def problems(outcomes: Sequence[Outcome], max_log_lines: int = 12) -> list[str]:
    """Shortfalls, duplicates and log lines at WARNING or above, per run."""
    lines = []
    for o in outcomes:
        if not o.problems and not o.log_lines:
            continue
        lines.append(f"- **{o.contestant} @ {o.latency_ms:g} ms**: " + "; ".join(o.problems))
        if o.log_lines:
            lines.append(f"  {len(o.log_lines)} log line(s) at WARNING or above, first ones:")
            lines.append("  ```")
            lines.extend(f"  {line[:300]}" for line in o.log_lines[:max_log_lines])
            lines.append("  ```")
    return lines


def details(outcomes: Sequence[Outcome]) -> str:
    """Per-run figures behind the table."""
    rows = [
        "| run | load before | window s | start-up CPU s | work CPU s (main + pool) "
        "| sim+receiver CPU s | harness CPU s | RSS MiB per process at peak "
        "| fetches | failed | rejected POSTs | dead letters |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        split = " + ".join(f"{rss / 2**20:.0f}" for rss in o.peak_rss_split) or "—"
        rows.append(
            f"| {o.contestant} @ {o.latency_ms:g} ms | {_fmt(o.load_before, 2)} "
            f"| {_fmt(o.elapsed_s, 2)} "
            f"| {_fmt(o.startup_cpu_s, 2)} | {_fmt(o.cpu_s, 2)}{_split(o.cpu_split)} "
            f"| {_fmt(o.servers_cpu_s, 2)} "
            f"| {_fmt(o.harness_cpu_s, 2)} | {split} "
            f"| {o.fetches} | {o.failed_fetches} | {o.rejected_posts} | {o.dead_letters} |"
        )
    return "\n".join(rows)


def _split(per_process: Sequence[float]) -> str:
    if len(per_process) < 2:
        return ""
    return " (" + " + ".join(f"{cpu:.2f}" for cpu in per_process) + ")"


def _read(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return "?"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def machine(
    n: int, redis_version: str, redis_embedded: bool, settings: Sequence[str] = ()
) -> list[str]:
    """What the figures were measured on."""
    versions = []
    for package in _VERSIONS:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    memory_kib = _read("/proc/meminfo", "MemTotal").split()[0]
    memory = f"{int(memory_kib) / 2**20:.1f} GiB" if memory_kib.isdigit() else "?"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; git {_git_commit()}",
        f"- CPUs: {os.cpu_count()} ({_read('/proc/cpuinfo', 'model name')}); memory {memory}",
        f"- load average at the end (1/5/15 min): {load}; before each run: see Per run",
        f"- Python {platform.python_version()} on {platform.platform()}",
        f"- {', '.join(versions)}",
        f"- Redis {redis_version}"
        + (" (embedded, started by the benchmark)" if redis_embedded else ""),
        f"- N = {n} sessions (or tasks) per run",
        *settings,
    ]


def markdown(
    outcomes: Sequence[Outcome], machine_lines: Sequence[str], live: Sequence[LiveOutcome] = ()
) -> str:
    """The whole results file."""
    every_ratio = [*ratios(outcomes), *floor_ratios(outcomes)]
    every_problem = [*problems(outcomes), *live_problems(live)]
    sections = [
        "# Benchmark results (`make bench`)",
        "Written by `python -m bench` on every run; the latest run only.",
        "## Machine\n" + "\n".join(machine_lines),
        "## Bulk: N ids queued in advance\n" + table(outcomes),
        "## Ratios\n" + ("\n".join(every_ratio) or "- (ours was not run)"),
        "## Live: events POSTed to web at fixed rates\n"
        + (live_table(live) if live else "- (not run)"),
        "## Targets (throughput and memory)\n"
        + ("\n".join(targets(outcomes)) or "- (not all contestants run)"),
        "## Targets (the ledger's cost)\n" + ("\n".join(ledger_targets(outcomes)) or "- (not run)"),
        "## Targets (live path)\n"
        + ("\n".join(live_targets(outcomes, live)) or "- (not all contestants run)"),
        "## Problems\n" + ("\n".join(every_problem) or "- none"),
        "## Per run (bulk)\n" + details(outcomes),
        "## Per step (live)\n" + (live_details(live) if live else "- (not run)"),
        "## Method\n" + METHOD,
    ]
    return "\n\n".join(sections) + "\n"
