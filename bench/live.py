"""The live path: FunnelFox events POSTed to the Procfile's ``web:`` line at a fixed rate.

One step is one (upstream latency, rate): a fresh database, ``web:`` and ``worker:`` started
as the Procfile runs them, a few warm-up events, then ``python -m bench.loadgen`` in its own
process for the step's duration (or until it proves the rate is not sustained), then a bounded
wait for the last deliveries. Each event's POST → delivered time is the receiver's arrival time
of its session minus the time the generator sent its POST: both ``time.monotonic()`` of
processes on this machine (CLOCK_MONOTONIC, one clock machine-wide on Linux).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.contestants import READY, START_TIMEOUT_S, Bench, broker_backlog
from bench.harness import Child, TreeMonitor, base_env
from bench.measure import log_problems
from worker.keys import DEAD_LETTERS
from workshop.procfile import local_command, procfile_command
from workshop.redis_server import free_port

WEBHOOK_PATH = "/webhooks/funnelfox"
WARM_UP_EVENTS = 40
WARM_UP_TIMEOUT_S = 60.0
# The generator's start-up, its last answers (bench.loadgen.ANSWER_GRACE_S) and some margin.
LOADGEN_SLACK_S = 60.0
SUSTAINED_P99_S = 1.0
STOPPED_DRAIN_S = 2.0
# A worker's warm shutdown with a backlog has taken over 30 s here; the figures are in by then.
STOP_TIMEOUT_S = 10.0
# The generator's own lag (POST sent later than due) above which a step's figures say more
# about the generator than about the system: a tenth of the tightest latency target.
GENERATOR_LAG_P99_LIMIT_S = 0.025


@dataclass
class LiveOutcome:
    """One live step: a rate at an upstream latency."""

    latency_ms: float
    rate: float
    duration_s: float
    planned: int = 0
    sent: int = 0
    accepted: int = 0  # answered 202
    refused: int = 0  # any other answer, or none
    delivered: int = 0  # accepted events delivered by the deadline
    duplicates: int = 0
    dead_letters: int = 0
    stop_reason: str = ""
    offered_rate: float | None = None  # POSTs per second, as sent
    delivered_rate: float | None = None  # deliveries per second, first POST to last delivery
    ran_s: float = 0.0
    drain_s: float = 0.0
    latency_s: dict[str, float] = field(default_factory=dict)  # p50/p95/p99, inf = undelivered
    # The same percentiles with each undelivered event at its age at the deadline: where a
    # percentile above is infinite, this is a lower bound for it.
    latency_bound_s: dict[str, float] = field(default_factory=dict)
    answer_ms: dict[str, float] = field(default_factory=dict)  # web's answer to the POST
    lag_ms: dict[str, float] = field(default_factory=dict)  # the generator's own lateness
    generator_cpu_s: float | None = None
    generator_scheduling: str = ""
    statuses: dict[int, int] = field(default_factory=dict)  # web's answers; 0 = none
    generator_max_in_flight: int = 0
    worker_cpu_s: float | None = None
    web_cpu_s: float | None = None
    servers_cpu_s: float | None = None
    backlog_at_stop: tuple[int, int] = (0, 0)  # (queued, unacked) when the generator stopped
    backlog_at_end: tuple[int, int] = (0, 0)  # the same at the deadline
    load_before: float | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    log_paths: list[str] = field(default_factory=list)

    @property
    def undelivered(self) -> int:
        """Events answered 202 and not delivered by the deadline."""
        return self.accepted - self.delivered

    @property
    def lost(self) -> int | None:
        """Undelivered events nothing can deliver any more; None while the broker holds some."""
        if self.backlog_at_end != (0, 0):
            return None
        return self.undelivered + self.dead_letters

    @property
    def generator_kept_up(self) -> bool:
        """Whether the generator sent on time (else the step measured the generator)."""
        return self.lag_ms.get("p99", math.inf) <= 1000 * GENERATOR_LAG_P99_LIMIT_S

    @property
    def sustained(self) -> bool:
        """The whole duration, nothing refused or lost, p99 POST → delivered within 1 s."""
        return (
            not self.stop_reason
            and self.sent == self.planned
            and self.refused == 0
            and self.lost == 0
            and self.latency_s.get("p99", math.inf) <= SUSTAINED_P99_S
            and self.generator_kept_up
        )

    def cpu_ms_per_session(self, cpu_s: float | None) -> float | None:
        """CPU per delivered session, in milliseconds."""
        return None if cpu_s is None or not self.delivered else 1000 * cpu_s / self.delivered


@dataclass
class LiveConfig:
    """The live steps' settings."""

    rates: Sequence[float]
    duration_s: float
    drain_s: float


def percentiles(values: Sequence[float], points: Mapping[str, float]) -> dict[str, float]:
    """Nearest-rank percentiles; an ``inf`` in ``values`` (undelivered) sorts last."""
    if not values:
        return {}
    ordered = sorted(values)
    return {
        name: ordered[max(0, math.ceil(share * len(ordered)) - 1)] for name, share in points.items()
    }


TAIL = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
LAG = {"p50": 0.50, "p99": 0.99, "max": 1.0}


def web_command(port: int) -> tuple[list[str], dict[str, str]]:
    """The Procfile's ``web:`` line through a shell, as a Procfile runner starts it."""
    line = " ".join(procfile_command("web"))
    bin_dir = str(Path(sys.executable).parent)
    extra = {"PORT": str(port), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    return ["sh", "-c", "exec " + line], extra


class LiveStep:
    """``web:`` and ``worker:`` for one step, the warm-up, the generator, the drain."""

    def __init__(self, bench: Bench, config: LiveConfig, latency_ms: float, rate: float) -> None:
        self.bench = bench
        self.config = config
        self.outcome = LiveOutcome(latency_ms, rate, config.duration_s)
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.name = f"l{latency_ms:g}r{rate:g}"
        self.http = httpx.Client(base_url=self.origin, timeout=10, trust_env=False)

    def run(self) -> LiveOutcome:
        """The step from a clean slate to its figures; every process it started stopped."""
        bench, outcome = self.bench, self.outcome
        bench.prepare(outcome.latency_ms)
        outcome.load_before = os.getloadavg()[0]
        command, extra = web_command(self.port)
        env = bench.worker_env()
        web = Child(f"web-{self.name}", command, {**env, **extra}, bench.log_dir)
        worker = None
        try:
            if not self._web_ready(web):
                outcome.problems.append(f"web never answered /readyz (exit {web.popen.poll()})")
                return outcome
            command = local_command(procfile_command("worker"))
            worker = Child(f"live-worker-{self.name}", command, env, bench.log_dir)
            if worker.wait_for(READY, START_TIMEOUT_S) is None:
                outcome.problems.append(f"worker never said it was ready ({worker.popen.poll()})")
                return outcome
            if not self._warm_up():
                return outcome
            self._measure(web, worker)
        finally:
            self.http.close()
            for child in (worker, web):
                if child is None:
                    continue
                status = child.stop(timeout_s=STOP_TIMEOUT_S)
                outcome.log_paths.append(str(child.log_path))
                outcome.log_lines.extend(log_problems(child.output()))
                if status == -signal.SIGKILL:
                    # After the figures were taken: worth knowing, not a fault of the step.
                    outcome.notes.append(
                        f"{child.name} ignored SIGTERM for {STOP_TIMEOUT_S:g} s: killed"
                    )
                # uvicorn exits with the SIGTERM status (README, Deploying); Celery with 0.
                elif status not in (0, None, -signal.SIGTERM):
                    outcome.problems.append(f"{child.name} exited with status {status}")
        return outcome

    def _web_ready(self, web: Child) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and web.alive():
            try:
                if self.http.get("/readyz").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def _warm_up(self) -> bool:
        """A few events through the whole path, so no pool process builds its clients mid-step."""
        bench = self.bench
        headers = {"Fox-Secret-Key": bench.sim.secret}
        for i in range(WARM_UP_EVENTS):
            body = {
                "id": f"evt_warm_{self.name}_{i}",
                "type": "onboarding.completed",
                "session_id": f"warm_{self.name}_{i}",
            }
            answer = self.http.post(WEBHOOK_PATH, json=body, headers=headers)
            if answer.status_code != 202:
                self.outcome.problems.append(f"warm-up event answered {answer.status_code}")
                return False
        deadline = time.monotonic() + WARM_UP_TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            if bench.receiver.wait_distinct(WARM_UP_EVENTS, min(1.0, remaining)) >= WARM_UP_EVENTS:
                bench.receiver.reset()
                bench.sim.reset()
                return True
        self.outcome.problems.append(f"warm-up not delivered within {WARM_UP_TIMEOUT_S:g} s")
        return False

    def _measure(self, web: Child, worker: Child) -> None:
        bench, outcome, config = self.bench, self.outcome, self.config
        web_tree, worker_tree = TreeMonitor(web.pid), TreeMonitor(worker.pid)
        web_cpu, worker_cpu = web_tree.cpu_s(), worker_tree.cpu_s()
        servers_cpu = bench.servers_cpu_s()
        report_path = bench.log_dir / f"loadgen-{self.name}.json"
        generator = Child(
            f"loadgen-{self.name}",
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                f"--web={self.origin}",
                f"--secret={bench.sim.secret}",
                f"--receiver={bench.receiver.origin}",
                f"--rate={outcome.rate:g}",
                f"--duration-s={config.duration_s:g}",
                f"--prefix={self.name}",
                f"--out={report_path}",
            ],
            base_env({}),
            bench.log_dir,
        )
        try:
            status: int | None = generator.popen.wait(config.duration_s + LOADGEN_SLACK_S)
        except subprocess.TimeoutExpired:
            status = None
        generator.stop()
        outcome.log_paths.append(str(generator.log_path))
        if status != 0 or not report_path.exists():
            outcome.problems.append(f"the load generator failed (exit {status})")
            outcome.log_lines.extend(log_problems(generator.output()))
            return
        report: dict[str, Any] = orjson.loads(report_path.read_bytes())
        outcome.backlog_at_stop = broker_backlog(bench.redis.client)
        accepted = sum(1 for e in report["events"] if e["status"] == 202)
        drain_started = time.monotonic()
        # A step stopped as not sustained has a backlog that waiting cannot clear.
        drain_s = min(config.drain_s, STOPPED_DRAIN_S) if report["stop_reason"] else config.drain_s
        deadline = drain_started + drain_s
        while (remaining := deadline - time.monotonic()) > 0:
            if bench.receiver.wait_distinct(accepted, min(1.0, remaining)) >= accepted:
                break
        outcome.drain_s = time.monotonic() - drain_started
        outcome.backlog_at_end = broker_backlog(bench.redis.client)
        outcome.worker_cpu_s = worker_tree.cpu_s() - worker_cpu
        outcome.web_cpu_s = web_tree.cpu_s() - web_cpu
        outcome.servers_cpu_s = bench.servers_cpu_s() - servers_cpu
        outcome.dead_letters = int(bench.redis.client.hlen(DEAD_LETTERS))
        analyse(outcome, report, bench.receiver.attempts(), time.monotonic())
        # The generator's share of the machine, beside what it drove.
        outcome.generator_cpu_s = float(report["cpu_s"])


def analyse(  # noqa: C901 - one verdict from a step's many figures, read in order
    outcome: LiveOutcome,
    report: Mapping[str, Any],
    attempts: Sequence[Mapping[str, Any]],
    end: float,
) -> None:
    """Join the generator's events with the receiver's deliveries."""
    events = report["events"]
    outcome.planned = int(report["planned"])
    outcome.sent = len(events)
    outcome.stop_reason = str(report["stop_reason"])
    first_delivery: dict[str, float] = {}
    for attempt in attempts:
        if not 200 <= int(attempt["status"]) < 300:
            continue
        session_id, at = str(attempt["session_id"]), float(attempt["received_at"])
        if session_id in first_delivery:
            outcome.duplicates += 1
            first_delivery[session_id] = min(first_delivery[session_id], at)
        else:
            first_delivery[session_id] = at
    waits, bounds, answers, lags = [], [], [], []
    for event in events:
        lags.append(event["posted"] - event["due"])
        if event["status"] != 202:
            outcome.refused += 1
            continue
        outcome.accepted += 1
        answers.append(event["answered"] - event["posted"])
        delivered_at = first_delivery.get(event["session_id"])
        if delivered_at is None:
            waits.append(math.inf)
            bounds.append(end - event["posted"])
        else:
            outcome.delivered += 1
            waits.append(delivered_at - event["posted"])
            bounds.append(waits[-1])
    outcome.latency_s = percentiles(waits, TAIL)
    outcome.answer_ms = {k: 1000 * v for k, v in percentiles(answers, TAIL).items()}
    outcome.lag_ms = {k: 1000 * v for k, v in percentiles(lags, LAG).items()}
    outcome.latency_bound_s = percentiles(bounds, TAIL)
    outcome.generator_max_in_flight = int(report["max_in_flight"])
    outcome.generator_scheduling = str(report["scheduling"])
    for event in events:
        outcome.statuses[event["status"]] = outcome.statuses.get(event["status"], 0) + 1
    if len(events) > 1:
        span = events[-1]["posted"] - events[0]["posted"]
        outcome.ran_s = span
        outcome.offered_rate = (len(events) - 1) / span if span > 0 else None
    if first_delivery and events:
        last = max(first_delivery.values())
        outcome.delivered_rate = outcome.delivered / (last - events[0]["posted"])
    strangers = first_delivery.keys() - {e["session_id"] for e in events}
    if strangers:
        outcome.problems.append(f"{len(strangers)} unexpected session id(s) delivered")
    if report.get("errors"):
        outcome.problems.append(f"POST errors at the generator: {report['errors']}")
    if not outcome.generator_kept_up:
        outcome.problems.append(
            f"the generator's schedule slipped (lag p99 {outcome.lag_ms.get('p99', 0):.0f} ms, "
            f"over {1000 * GENERATOR_LAG_P99_LIMIT_S:.0f} ms): the step cannot count as sustained"
        )
    if outcome.dead_letters:
        outcome.problems.append(f"{outcome.dead_letters} dead letter(s)")
