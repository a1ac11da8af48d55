"""The live steps as tables, and the targets that need them (live, floor, bulk)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.live import SUSTAINED_P99_S, LiveOutcome
from bench.measure import Outcome

# The live path's targets: p99 POST → delivered at 100 events/s, per upstream latency.
P99_TARGETS_S = {0.0: 0.250, 50.0: 0.300}
P99_TARGET_RATE = 100.0
SUSTAINED_SHARE_OF_BULK = 0.5
CPU_FACTOR_OVER_FLOOR = 1.25
MIN_SUSTAINED_STEP_S = 15.0


def _fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def wait(o: LiveOutcome, name: str) -> str:
    """A POST → delivered percentile: ms under a second, else s; a lower bound if undelivered."""
    value = o.latency_s.get(name)
    if value is None:
        return "—"
    if math.isinf(value):
        return "> " + _seconds(o.latency_bound_s.get(name, 0.0))
    return _seconds(value)


def _seconds(value: float) -> str:
    return f"{1000 * value:,.0f} ms" if value < 1 else f"{value:,.1f} s"


def verdict(o: LiveOutcome) -> str:
    """Sustained, or why not, in a few words."""
    if o.sustained:
        return "sustained"
    if not o.sent:
        return "did not run"
    reasons = []
    if o.stop_reason:
        reasons.append(f"stopped after {o.ran_s:.0f} s")
    if o.latency_s.get("p99", math.inf) > SUSTAINED_P99_S:
        reasons.append(f"p99 > {SUSTAINED_P99_S:g} s")
    if o.refused:
        reasons.append(f"{o.refused} refused")
    if o.lost:
        reasons.append(f"{o.lost} lost")
    if not o.generator_kept_up:
        reasons.append("generator lagged")
    return "NOT sustained (" + ", ".join(reasons or ["incomplete"]) + ")"


def _undelivered(o: LiveOutcome) -> str:
    queued, unacked = o.backlog_at_end
    if not o.undelivered:
        return "0"
    if o.lost is None:
        return f"{o.undelivered} ({queued} queued, {unacked} unacked)"
    return f"{o.undelivered} (broker empty)"


def web_ms_per_event(o: LiveOutcome) -> float | None:
    """web's CPU per event it answered 202, in milliseconds."""
    return None if o.web_cpu_s is None or not o.accepted else 1000 * o.web_cpu_s / o.accepted


def live_table(live: Sequence[LiveOutcome]) -> str:
    """One row per step."""
    rows = [
        "| upstream | rate | posted (202) | POSTs/s | delivered/s | p50 | p95 | p99 "
        "| web answer p50 / p99 | undelivered at deadline | lost | worker CPU ms/session "
        "| web CPU ms/event | verdict |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for o in live:
        web_ms = web_ms_per_event(o)
        rows.append(
            f"| {o.latency_ms:g} ms | {o.rate:,.0f}/s | {o.sent:,} ({o.accepted:,}) "
            f"| {_fmt(o.offered_rate)} | {_fmt(o.delivered_rate)} "
            f"| {wait(o, 'p50')} | {wait(o, 'p95')} | {wait(o, 'p99')} "
            f"| {_fmt(o.answer_ms.get('p50'))} / {_fmt(o.answer_ms.get('p99'))} ms "
            f"| {_undelivered(o)} | {'?' if o.lost is None else o.lost} "
            f"| {_fmt(o.cpu_ms_per_session(o.worker_cpu_s), 2)} | {_fmt(web_ms, 2)} "
            f"| {verdict(o)} |"
        )
    return "\n".join(rows)


def live_details(live: Sequence[LiveOutcome]) -> str:
    """Per-step figures behind the live table, the load generator's own among them."""
    rows = [
        "| step | load before | planned | ran s | stop | drain s | web's answers (0: none "
        "in 10 s) | backlog at stop / end (queued, unacked) | generator lag p50 / p99 / max ms "
        "| generator CPU s (share of a core), scheduling | max in flight "
        "| worker / web / sim+receiver CPU s | duplicates |",
        "|---|---:|---:|---:|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for o in live:
        lag = " / ".join(_fmt(o.lag_ms.get(k), 1) for k in ("p50", "p99", "max"))
        statuses = ", ".join(f"{n:,}× {code}" for code, n in sorted(o.statuses.items())) or "—"
        share = (
            f" ({o.generator_cpu_s / o.ran_s:.0%})"
            if o.generator_cpu_s is not None and o.ran_s
            else ""
        )
        rows.append(
            f"| {o.rate:g}/s @ {o.latency_ms:g} ms | {_fmt(o.load_before, 2)} | {o.planned:,} "
            f"| {o.ran_s:.1f} | {'; '.join([o.stop_reason or 'ran to the end', *o.notes])} "
            f"| {o.drain_s:.1f} "
            f"| {statuses} | {o.backlog_at_stop} / {o.backlog_at_end} | {lag} "
            f"| {_fmt(o.generator_cpu_s, 2)}{share}, {o.generator_scheduling} "
            f"| {o.generator_max_in_flight} "
            f"| {_fmt(o.worker_cpu_s, 2)} / {_fmt(o.web_cpu_s, 2)} / {_fmt(o.servers_cpu_s, 2)} "
            f"| {o.duplicates} |"
        )
    return "\n".join(rows)


def live_problems(live: Sequence[LiveOutcome], max_log_lines: int = 12) -> list[str]:
    """What went wrong in a step, beyond not sustaining its rate."""
    lines = []
    for o in live:
        if not o.problems and not o.log_lines:
            continue
        lines.append(f"- **live {o.rate:g}/s @ {o.latency_ms:g} ms**: " + "; ".join(o.problems))
        if o.log_lines:
            lines.append(f"  {len(o.log_lines)} log line(s) at WARNING or above, first ones:")
            lines.append("  ```")
            lines.extend(f"  {line[:300]}" for line in o.log_lines[:max_log_lines])
            lines.append("  ```")
    return lines


def _find(outcomes: Sequence[Outcome], contestant: str, latency: float) -> Outcome | None:
    return next(
        (o for o in outcomes if o.contestant == contestant and o.latency_ms == latency), None
    )


def _mark(met: bool) -> str:
    return "met" if met else "NOT met"


def floor_ratios(outcomes: Sequence[Outcome]) -> list[str]:
    """Ours against the no-broker floor, per latency."""
    lines = []
    for latency in sorted({o.latency_ms for o in outcomes}):
        ours, floor = _find(outcomes, "ours", latency), _find(outcomes, "floor", latency)
        if ours is None or floor is None or not ours.rate or not floor.rate:
            continue
        cpu = (
            f"{ours.cpu_ms_per_item / floor.cpu_ms_per_item:.2f}× the CPU per session"
            if ours.cpu_ms_per_item and floor.cpu_ms_per_item
            else "CPU —"
        )
        lines.append(
            f"- {latency:g} ms: ours/floor {ours.rate / floor.rate:.2f}× sessions/s, {cpu}"
        )
    return lines


def live_targets(outcomes: Sequence[Outcome], live: Sequence[LiveOutcome]) -> list[str]:
    """The live path's targets, each marked met or not, with the figures that decide."""
    lines = []
    for latency in sorted({o.latency_ms for o in live}):
        steps = [o for o in live if o.latency_ms == latency]
        target = P99_TARGETS_S.get(latency)
        at_rate = next((o for o in steps if o.rate == P99_TARGET_RATE), None)
        if target is not None and at_rate is not None:
            p99 = at_rate.latency_s.get("p99", math.inf)
            met = p99 <= target and at_rate.sustained
            lines.append(
                f"- {latency:g} ms: live p99 POST → delivered ≤ {1000 * target:.0f} ms at "
                f"{P99_TARGET_RATE:g} events/s: {wait(at_rate, 'p99')} → {_mark(met)}"
            )
        ours = _find(outcomes, "ours", latency)
        sustained = [o for o in steps if o.sustained]
        best = max(sustained, key=lambda o: o.rate) if sustained else None
        if ours is not None and ours.rate:
            needed = SUSTAINED_SHARE_OF_BULK * ours.rate
            long_enough = all(o.duration_s >= MIN_SUSTAINED_STEP_S for o in steps)
            got = f"{best.rate:,.0f}/s" if best else "none of the steps"
            met = best is not None and best.rate >= needed and long_enough
            note = "" if long_enough else f" (steps shorter than {MIN_SUSTAINED_STEP_S:g} s)"
            lines.append(
                f"- {latency:g} ms: sustained live rate ≥ {SUSTAINED_SHARE_OF_BULK:g}× bulk "
                f"({ours.rate:,.0f}/s, so ≥ {needed:,.0f}/s): highest sustained step "
                f"{got} → {_mark(met)}{note}"
            )
        lines.extend(_cpu_targets(outcomes, latency, best or at_rate))
    if not live:
        for latency in sorted({o.latency_ms for o in outcomes}):
            lines.extend(_cpu_targets(outcomes, latency, None))
    return lines


def _cpu_targets(
    outcomes: Sequence[Outcome], latency: float, step: LiveOutcome | None
) -> list[str]:
    floor = _find(outcomes, "floor", latency)
    if floor is None or not floor.cpu_ms_per_item:
        return []
    limit = CPU_FACTOR_OVER_FLOOR * floor.cpu_ms_per_item
    lines = []
    ours = _find(outcomes, "ours", latency)
    if ours is not None and ours.cpu_ms_per_item:
        lines.append(
            f"- {latency:g} ms: worker CPU per session ≤ {CPU_FACTOR_OVER_FLOOR:g}× floor "
            f"({floor.cpu_ms_per_item:.2f} ms, so ≤ {limit:.2f} ms), bulk: "
            f"{ours.cpu_ms_per_item:.2f} ms = {ours.cpu_ms_per_item / floor.cpu_ms_per_item:.2f}×"
            f" → {_mark(ours.cpu_ms_per_item <= limit)}"
        )
    worker_ms = step.cpu_ms_per_session(step.worker_cpu_s) if step is not None else None
    if step is not None and worker_ms is not None:
        web_ms = web_ms_per_event(step) or 0.0
        state = "sustained" if step.sustained else "not sustained"
        lines.append(
            f"- {latency:g} ms: the same, live at {step.rate:g}/s ({state}): worker "
            f"{worker_ms:.2f} ms = {worker_ms / floor.cpu_ms_per_item:.2f}× → "
            f"{_mark(worker_ms <= limit)}; with web's {web_ms:.2f} ms per event "
            f"{(worker_ms + web_ms) / floor.cpu_ms_per_item:.2f}×"
        )
    return lines
