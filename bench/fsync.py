"""``python -m bench --fsync always,everysec,no``: what Redis's AOF fsync policy costs the worker.

Each policy gets a Redis of its own (AOF on, its files on this machine's disk, as a compose
volume keeps them), and our worker runs against it exactly as in ``make bench``: ids queued
by the CLI, the Procfile's line, the shipped defaults. The policies take turns, ``--repeat``
times, so load from elsewhere on the machine falls on all of them alike.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import mean

from bench import contestants
from bench.measure import Outcome
from bench.services import BenchRedis, Receiver, Simulator, funnelfox_secret, webhook_secret
from workshop.redis_server import EmbeddedRedis

POLICIES = ("always", "everysec", "no")

Figures = dict[tuple[str, float], list[float]]


def disk_of(path: Path) -> str:
    """``df`` for the directory Redis writes its AOF in: which device and filesystem."""
    shown = subprocess.run(
        ["df", "-hT", str(path)], capture_output=True, text=True, check=False, timeout=10
    )
    lines = shown.stdout.strip().splitlines()
    return lines[-1] if lines else "unknown"


def run_fsync(args: argparse.Namespace, progress: Callable[[Outcome], None]) -> Figures:
    """Our worker against each fsync policy's Redis; sessions/s by (policy, latency)."""
    policies = [p.strip() for p in args.fsync.split(",") if p.strip()]
    unknown = set(policies) - set(POLICIES)
    if unknown:
        raise SystemExit(f"--fsync takes {', '.join(POLICIES)}; not {', '.join(sorted(unknown))}")
    latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
    log_dir = Path(tempfile.mkdtemp(prefix="ffe-bench-fsync-"))
    figures: Figures = defaultdict(list)
    sim = Simulator(funnelfox_secret(), log_dir)
    receiver = Receiver(webhook_secret(), log_dir)
    clean = True
    try:
        for round_ in range(1, args.repeat + 1):
            for policy in policies:
                with EmbeddedRedis(appendonly=True, appendfsync=policy) as server:
                    if round_ == 1 and policy == policies[0]:
                        print(f"AOF on: {disk_of(server.directory)}", flush=True)
                    bench_redis = BenchRedis(server.url, args.redis_db)
                    try:
                        bench = contestants.Bench(
                            bench_redis, sim, receiver, log_dir, args.sessions, args.timeout
                        )
                        for latency in latencies:
                            outcome = contestants.run_ours(bench, latency)
                            outcome.contestant = f"appendfsync {policy} (round {round_})"
                            progress(outcome)
                            clean &= not outcome.problems and outcome.delivered == outcome.n
                            if outcome.rate:
                                figures[(policy, latency)].append(outcome.rate)
                    finally:
                        bench_redis.close()
    finally:
        receiver.close()
        sim.close()
        if clean and not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            print(f"\nlogs of every process kept in {log_dir}", flush=True)
    print("\n" + table(figures, policies, latencies))
    return figures


def table(figures: Figures, policies: Sequence[str], latencies: Sequence[float]) -> str:
    """Sessions/s per policy and latency, every run and the mean, and the ratio to the last
    policy given (``no`` by default: the OS flushes when it likes)."""
    base = policies[-1]
    rows = [
        f"| appendfsync | upstream | sessions/s, each run | mean | vs {base} |",
        "|---|---:|---|---:|---:|",
    ]
    for latency in latencies:
        reference = figures.get((base, latency))
        for policy in policies:
            runs = figures.get((policy, latency), [])
            if not runs:
                rows.append(f"| {policy} | {latency:g} ms | — | — | — |")
                continue
            ratio = f"{mean(runs) / mean(reference):.2f}×" if reference else "—"
            each = ", ".join(f"{r:,.0f}" for r in runs)
            rows.append(f"| {policy} | {latency:g} ms | {each} | {mean(runs):,.0f} | {ratio} |")
    return "\n".join(rows)
