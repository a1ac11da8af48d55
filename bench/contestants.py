"""The three contestants: our worker, the textbook recipe, Celery's no-op ceiling."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench import noop, textbook
from bench.harness import (
    Child,
    TreeMonitor,
    base_env,
    cpu_seconds,
    enqueue,
    wait_until,
)
from bench.measure import (
    Outcome,
    QueueWatch,
    analyse_deliveries,
    log_problems,
    pool_description,
)
from bench.services import BenchRedis, Receiver, Simulator
from worker.keys import DEAD_LETTERS as RECORDS_KEY
from worker.keys import KOMBU_UNACKED
from workshop.procfile import local_command, procfile_command

READY = " ready."
LEDGER_ROUND = ", round "
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 10.0
CELERY_FLAGS = ["--loglevel=INFO", "--without-gossip", "--without-mingle"]  # as the Procfile's


@dataclass
class Bench:
    """Everything the contestants share in one benchmark run."""

    redis: BenchRedis
    sim: Simulator
    receiver: Receiver
    log_dir: Path
    n: int
    timeout_s: float

    def ids(self) -> list[str]:
        """The session ids every contestant gets."""
        return [f"bench_{i}" for i in range(1, self.n + 1)]

    def worker_env(self) -> dict[str, str]:
        """The five variables the worker is given; the shipped defaults do the rest."""
        return base_env(
            {
                "REDIS_URL": self.redis.url,
                "FUNNELFOX_API_URL": self.sim.api_url,
                "FUNNELFOX_SECRET": self.sim.secret,
                "WEBHOOK_URL": self.receiver.hook_url,
                "WEBHOOK_SECRET": self.receiver.secret,
            }
        )

    def servers_cpu_s(self) -> float:
        """CPU seconds the simulator and the receiver used so far."""
        return cpu_seconds([self.sim.child.pid, self.receiver.child.pid])

    def prepare(self, latency_ms: float) -> None:
        """A clean slate: an empty database, a simulator at ``latency_ms``, a fresh receiver."""
        self.redis.flush()
        self.sim.configure(latency_ms)
        self.receiver.reset()


Waiter = Callable[[float, Child], bool]


def _run_worker(
    bench: Bench, outcome: Outcome, name: str, command: list[str], env: dict[str, str], done: Waiter
) -> None:
    """Start a worker, wait until ``done`` says the work is finished, measure it, stop it."""
    # Other work on the machine shows in the figures: keep the 1-minute load beside them.
    outcome.load_before = os.getloadavg()[0]
    child = Child(f"{name}-{outcome.latency_ms:g}ms", command, env, bench.log_dir)
    monitor = TreeMonitor(child.pid).start()
    try:
        if child.wait_for(READY, START_TIMEOUT_S) is None:
            outcome.problems.append(f"worker never said it was ready (exit {child.popen.poll()})")
            return
        # CPU spent starting up (imports, forking the pool) is not per-session work.
        at_ready = monitor.cpu_by_process()
        outcome.startup_cpu_s = sum(at_ready.values())
        harness_cpu, servers_cpu = cpu_seconds([os.getpid()]), bench.servers_cpu_s()
        redis_cpu = bench.redis.cpu_s()
        if not done(child.started_at + bench.timeout_s, child):
            state = "exited" if not child.alive() else f"timed out after {bench.timeout_s:g} s"
            queued, unacked = broker_backlog(bench.redis.client)
            outcome.problems.append(
                f"worker {state} before the work was done, leaving {queued} message(s) "
                f"queued and {unacked} unacknowledged"
            )
        elif not wait_until(lambda: broker_idle(bench.redis.client), SETTLE_TIMEOUT_S):
            outcome.problems.append("messages still queued or unacknowledged when stopped")
        at_end = monitor.cpu_by_process()
        outcome.cpu_s = sum(at_end.values()) - outcome.startup_cpu_s
        outcome.redis_cpu_s = bench.redis.cpu_s() - redis_cpu
        outcome.cpu_split = [cpu - at_ready.get(pid, 0.0) for pid, cpu in at_end.items()]
        # What else ran on the same cores meanwhile: this harness, the simulator and receiver.
        outcome.harness_cpu_s = cpu_seconds([os.getpid()]) - harness_cpu
        outcome.servers_cpu_s = bench.servers_cpu_s() - servers_cpu
    finally:
        monitor.stop()
        status = child.stop()
        outcome.peak_rss_bytes = monitor.peak_rss_bytes
        outcome.peak_rss_split = monitor.peak_rss_split
        outcome.peak_pss_bytes = monitor.peak_pss_bytes
        outcome.peak_processes = monitor.peak_processes
        text = child.output()
        outcome.log_path = str(child.log_path)
        outcome.log_lines = log_problems(text)
        outcome.pool = pool_description(text)
        if status not in (0, None):
            outcome.problems.append(f"worker exited with status {status} on SIGTERM")


def broker_backlog(client: redis.Redis) -> tuple[int, int]:
    """Messages queued (in any list) and messages delivered but not yet acknowledged."""
    # The benchmark's database holds only its own keys, so every list is a queue.
    queued = sum(int(client.llen(key)) for key in client.scan_iter(_type="list", count=1000))
    return queued, int(client.hlen(KOMBU_UNACKED))


def broker_idle(client: redis.Redis) -> bool:
    """No message queued and none waiting for its acknowledgement."""
    return broker_backlog(client) == (0, 0)


def until_delivered(receiver: Receiver, n: int) -> Waiter:
    def wait(deadline: float, child: Child) -> bool:
        while (remaining := deadline - time.monotonic()) > 0:
            if receiver.wait_distinct(n, min(1.0, remaining)) >= n:
                return True
            if not child.alive():
                return False
        return False

    return wait


def run_ours(bench: Bench, latency_ms: float, *, ledger: bool = True, round_no: int = 1) -> Outcome:
    """The Procfile's worker, with ids queued by the project's own CLI while it is stopped.

    ``ledger=False`` is the same worker with LEDGER_ENABLED=false: what the ledger costs.
    ``round_no`` > 1 names a repeat of the pair (``LEDGER_ROUND``).
    """
    name = "ours" if ledger else "ours, no ledger"
    if round_no > 1:
        name += f"{LEDGER_ROUND}{round_no}"
    outcome = Outcome(name, latency_ms, bench.n)
    bench.prepare(latency_ms)
    env, ids = bench.worker_env(), bench.ids()
    if not ledger:
        env["LEDGER_ENABLED"] = "false"
    queued = enqueue(ids, env)
    if queued.returncode != 0:
        outcome.problems.append(f"enqueue failed ({queued.returncode}): {queued.stderr.strip()}")
        return outcome
    started = time.monotonic()
    command = local_command(procfile_command("worker"))
    _run_worker(bench, outcome, name, command, env, until_delivered(bench.receiver, bench.n))
    analyse_deliveries(
        outcome,
        ids,
        bench.sim.requests(),
        bench.receiver.attempts(),
        (started, time.monotonic()),
    )
    outcome.dead_letters = int(bench.redis.client.hlen(RECORDS_KEY))
    if outcome.dead_letters:
        outcome.problems.append(f"{outcome.dead_letters} dead letter(s) in {RECORDS_KEY}")
    return outcome


def run_floor(bench: Bench, latency_ms: float) -> Outcome:
    """``python -m bench.floor``: the same work per session, one asyncio process per core."""
    outcome = Outcome("floor", latency_ms, bench.n)
    bench.prepare(latency_ms)
    ids = bench.ids()
    command = [sys.executable, "-m", "bench.floor", "--sessions", str(bench.n)]
    started = time.monotonic()
    waiter = until_delivered(bench.receiver, bench.n)
    _run_worker(bench, outcome, "floor", command, bench.worker_env(), waiter)
    analyse_deliveries(
        outcome,
        ids,
        bench.sim.requests(),
        bench.receiver.attempts(),
        (started, time.monotonic()),
    )
    return outcome


def send_tasks(
    broker_url: str, task: str, queue: str, arguments: Sequence[tuple[Any, ...]], *, events: bool
) -> None:
    """Queue one message per argument tuple over one connection."""
    app = Celery("bench-sender", broker=broker_url, set_as_current=False)
    app.conf.task_send_sent_event = events
    try:
        with app.producer_or_acquire() as producer:
            for args in arguments:
                app.send_task(task, args=args, queue=queue, producer=producer)
    finally:
        app.close()


def run_textbook(bench: Bench, latency_ms: float) -> Outcome:
    """One task per id, sync httpx in 32 threads; measured like ours."""
    outcome = Outcome("textbook", latency_ms, bench.n)
    bench.prepare(latency_ms)
    ids = bench.ids()
    send_tasks(bench.redis.url, textbook.TASK, textbook.QUEUE, [(i,) for i in ids], events=False)
    started = time.monotonic()
    pool = ["--pool", "threads", "-c", str(textbook.CONCURRENCY)]
    command = local_command(["celery", "-A", "bench.textbook", "worker", *pool, *CELERY_FLAGS])
    waiter = until_delivered(bench.receiver, bench.n)
    _run_worker(bench, outcome, "textbook", command, bench.worker_env(), waiter)
    analyse_deliveries(
        outcome,
        ids,
        bench.sim.requests(),
        bench.receiver.attempts(),
        (started, time.monotonic()),
    )
    return outcome


def run_noop(bench: Bench, latency_ms: float, pool: str, concurrency: int) -> Outcome:
    """N no-op tasks drained by ``celery -A bench.noop worker``, timed by watching the queue."""
    outcome = Outcome(f"no-op {pool} ×{concurrency}", latency_ms, bench.n)
    bench.prepare(latency_ms)
    send_tasks(bench.redis.url, noop.TASK, noop.QUEUE, [()] * bench.n, events=True)
    watcher_client = redis.Redis.from_url(bench.redis.url)
    watch = QueueWatch(watcher_client, noop.QUEUE, bench.n).start()

    def drained(deadline: float, child: Child) -> bool:
        while (remaining := deadline - time.monotonic()) > 0:
            if watch.done.wait(min(0.5, remaining)):
                return True
            if not child.alive():
                return False
        return False

    options = ["--pool", pool, "-c", str(concurrency)]
    command = local_command(["celery", "-A", "bench.noop", "worker", *options, *CELERY_FLAGS])
    env = base_env({"REDIS_URL": bench.redis.url})
    try:
        _run_worker(bench, outcome, f"noop-{pool}", command, env, drained)
    finally:
        watch.stop()
        watcher_client.close()
    outcome.delivered = bench.n - watch.remaining
    if watch.first_drop is not None and watch.drained is not None:
        outcome.elapsed_s = watch.drained - watch.first_drop
    if outcome.delivered < bench.n:
        outcome.problems.append(f"SHORTFALL: {bench.n - outcome.delivered} task(s) not acked")
    return outcome
