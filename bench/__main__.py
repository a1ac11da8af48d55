"""``python -m bench``: the worker, the textbook recipe and Celery's no-op ceiling, side by side."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import FrameType

import redis

from bench import contestants, report
from bench.harness import ROOT, stop_all
from bench.measure import Outcome
from bench.services import BENCH_DB, BenchRedis, Receiver, Simulator, funnelfox_secret
from bench.services import webhook_secret as new_webhook_secret

CONTESTANTS = ("ours", "textbook", "noop")
Run = Callable[[contestants.Bench, float], Outcome]


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--sessions", type=int, default=2000, metavar="N", help="ids per run")
    parser.add_argument(
        "--latencies", default="0,50", help="upstream latencies in ms, comma-separated"
    )
    parser.add_argument(
        "--only", action="append", choices=CONTESTANTS, help="run only these (repeatable)"
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis server (an embedded one is started when none answers)",
    )
    parser.add_argument(
        "--redis-db", type=int, default=BENCH_DB, help="the database to use and flush"
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="hard limit per run, seconds")
    parser.add_argument("--no-noop-threads", action="store_true", help="skip no-op threads ×32")
    parser.add_argument("--results", type=Path, default=report.RESULTS_PATH)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--keep-logs", action="store_true", help="keep logs even when all is well")
    parser.add_argument(
        "--fsync",
        metavar="POLICIES",
        help="instead: our worker against a Redis of its own per AOF appendfsync policy "
        "(comma-separated: always, everysec, no)",
    )
    parser.add_argument(
        "--repeat", type=int, default=2, metavar="N", help="with --fsync: rounds of all policies"
    )
    return parser


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turned into an exception so every finally block runs and no child is left behind.
    raise KeyboardInterrupt(f"signal {signum}")


def _progress(outcome: Outcome) -> None:
    rate = f"{outcome.rate:,.0f}/s" if outcome.rate else "—"
    cpu = f"{outcome.cpu_ms_per_item:.2f} ms" if outcome.cpu_ms_per_item else "—"
    print(
        f"  {outcome.contestant:<20} {outcome.latency_ms:>4g} ms  {rate:>9}  CPU {cpu}/item  "
        f"RSS {outcome.peak_rss_mib:.0f} MiB  {outcome.delivered}/{outcome.n}",
        flush=True,
    )
    for problem in outcome.problems:
        print(f"    !! {problem}", flush=True)
    if outcome.log_lines:
        print(f"    !! {len(outcome.log_lines)} log line(s) at WARNING+ in {outcome.log_path}")


def run(args: argparse.Namespace) -> list[Outcome]:
    """Every requested contestant at every latency, on one Redis, simulator and receiver."""
    chosen = set(args.only or CONTESTANTS)
    latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
    log_dir = Path(tempfile.mkdtemp(prefix="ffe-bench-"))
    if (ROOT / ".env").exists():
        print("!! a .env exists in the repository: the worker reads it too", flush=True)
    bench_redis = BenchRedis(args.redis_url, args.redis_db)
    sim = receiver = None
    outcomes: list[Outcome] = []
    try:
        sim = Simulator(funnelfox_secret(), log_dir)
        receiver = Receiver(new_webhook_secret(), log_dir)
        where = "embedded" if bench_redis.embedded else "found"
        print(f"redis {bench_redis.url} ({where})", flush=True)
        print(f"simulator {sim.api_url}, receiver {receiver.hook_url}", flush=True)
        bench = contestants.Bench(bench_redis, sim, receiver, log_dir, args.sessions, args.timeout)
        for latency in latencies:
            for run_one in _runs(chosen, noop_threads=not args.no_noop_threads):
                outcome = run_one(bench, latency)
                _progress(outcome)
                outcomes.append(outcome)
        machine = report.machine(
            args.sessions, bench_redis.server_version(), bench_redis.embedded is not None
        )
        _print(outcomes)
        if not args.no_write:
            args.results.write_text(report.markdown(outcomes, machine))
            print(f"\nwritten to {args.results}")
        return outcomes
    finally:
        for service in (receiver, sim):
            if service is not None:
                service.close()
        stop_all()
        with contextlib.suppress(redis.RedisError):
            bench_redis.flush()  # leave nothing but the owner mark behind
        bench_redis.close()
        _keep_logs_if_needed(log_dir, outcomes, args.keep_logs)


def _keep_logs_if_needed(log_dir: Path, outcomes: Sequence[Outcome], keep: bool) -> None:
    """Keep the processes' logs when something went wrong (or when asked), else remove them."""
    clean = bool(outcomes) and not any(o.problems or o.log_lines for o in outcomes)
    if clean and not keep:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"\nlogs of every process kept in {log_dir}", flush=True)


def _runs(chosen: set[str], *, noop_threads: bool) -> list[Run]:
    """The runs at one latency, in order."""
    runs: list[Run] = []
    if "ours" in chosen:
        runs.append(contestants.run_ours)
    if "textbook" in chosen:
        runs.append(contestants.run_textbook)
    if "noop" in chosen:
        runs.append(partial(contestants.run_noop, pool="prefork", concurrency=2))
        if noop_threads:
            runs.append(partial(contestants.run_noop, pool="threads", concurrency=32))
    return runs


def _print(outcomes: Sequence[Outcome]) -> None:
    print("\n" + report.table(outcomes))
    for title, lines in (
        ("Ratios", report.ratios(outcomes)),
        ("Targets (issue 6)", report.targets(outcomes)),
        ("Problems", report.problems(outcomes, max_log_lines=5)),
    ):
        if lines:
            print(f"\n{title}\n" + "\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; non-zero when any run fell short."""
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    if args.fsync:
        from bench.fsync import run_fsync

        try:
            run_fsync(args, _progress)
        except KeyboardInterrupt:
            print("\ninterrupted; every child process stopped", file=sys.stderr)
            return 130
        print(f"\ntook {time.monotonic() - started:.0f} s")
        return 0
    try:
        outcomes = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; every child process stopped", file=sys.stderr)
        return 130
    print(f"\ntook {time.monotonic() - started:.0f} s")
    short = [f"{o.contestant} @ {o.latency_ms:g} ms" for o in outcomes if o.delivered < o.n]
    if short:
        print(f"\n!! SHORTFALL in {len(short)} run(s): {', '.join(short)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
