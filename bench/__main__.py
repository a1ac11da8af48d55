"""``python -m bench``: the worker in bulk beside its references, and the live path at fixed rates.

Bulk: N ids queued in advance for this worker, the textbook recipe, Celery's no-op ceiling and
the no-broker floor. Live: FunnelFox events POSTed to the Procfile's web: line at fixed rates,
delivered by its worker: line. All on one Redis, simulator and receiver.
"""

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

from bench import contestants, live_report, report
from bench.harness import ROOT, stop_all
from bench.live import LiveConfig, LiveOutcome, LiveStep
from bench.measure import Outcome
from bench.services import BENCH_DB, BenchRedis, Receiver, Simulator, funnelfox_secret
from bench.services import webhook_secret as new_webhook_secret

CONTESTANTS = ("ours", "ledger", "floor", "textbook", "noop", "live")
Run = Callable[[contestants.Bench, float], Outcome]
SESSIONS = 20_000
QUICK_SESSIONS = 2_000
RATES = "100,300,500,700,1000"
LIVE_DURATION_S = 15.0
QUICK_LIVE_DURATION_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help=f"a shorter run: N = {QUICK_SESSIONS:,}, live steps of {QUICK_LIVE_DURATION_S:g} s "
        "(also BENCH_QUICK=1)",
    )
    parser.add_argument(
        "--sessions", type=int, metavar="N", help=f"ids per bulk run (default {SESSIONS:,})"
    )
    parser.add_argument(
        "--rates", default=RATES, help="live event rates per second, comma-separated"
    )
    parser.add_argument(
        "--live-duration",
        type=float,
        metavar="S",
        help=f"seconds per live step (default {LIVE_DURATION_S:g})",
    )
    parser.add_argument(
        "--live-drain",
        type=float,
        default=10.0,
        metavar="S",
        help="how long after its last POST a live step waits for deliveries",
    )
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
        "--own-redis",
        action="store_true",
        help="start a redis-server of its own even when one answers (a shared machine)",
    )
    parser.add_argument(
        "--redis-db", type=int, default=BENCH_DB, help="the database to use and flush"
    )
    parser.add_argument(
        "--timeout", type=float, help="hard limit per bulk run, seconds (default 60 + N / 50)"
    )
    parser.add_argument(
        "--ledger-rounds",
        type=int,
        default=5,
        metavar="K",
        help="pairs of runs with and without the ledger per latency, alternating which goes "
        "first; the medians are reported",
    )
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


def _live_progress(o: LiveOutcome) -> None:
    print(
        f"  live {o.rate:>6,.0f}/s    {o.latency_ms:>4g} ms  {o.sent:,}/{o.planned:,} posted "
        f"({o.accepted:,} answered 202) at {o.offered_rate or 0:,.0f}/s, {o.delivered:,} "
        f"delivered at {o.delivered_rate or 0:,.0f}/s; p50 {live_report.wait(o, 'p50')}, "
        f"p99 {live_report.wait(o, 'p99')}; {live_report.verdict(o)}",
        flush=True,
    )
    for line in [o.stop_reason, *o.notes]:
        if line:
            print(f"    {line}", flush=True)
    print(
        f"    generator: lag p99 {o.lag_ms.get('p99', 0):.1f} ms, max "
        f"{o.lag_ms.get('max', 0):.1f} ms; CPU {o.generator_cpu_s or 0:.2f} s over {o.ran_s:.1f} s",
        flush=True,
    )
    for problem in o.problems:
        print(f"    !! {problem}", flush=True)
    if o.log_lines:
        print(f"    !! {len(o.log_lines)} log line(s) at WARNING+ in {', '.join(o.log_paths)}")


def settle(args: argparse.Namespace) -> None:
    """Defaults that depend on --quick."""
    if args.sessions is None:
        args.sessions = QUICK_SESSIONS if args.quick else SESSIONS
    if args.live_duration is None:
        args.live_duration = QUICK_LIVE_DURATION_S if args.quick else LIVE_DURATION_S
    if args.timeout is None:
        args.timeout = 60 + args.sessions / 50


def run(args: argparse.Namespace) -> tuple[list[Outcome], list[LiveOutcome]]:
    """Every requested contestant at every latency, on one Redis, simulator and receiver."""
    started = time.monotonic()
    chosen = set(args.only or CONTESTANTS)
    latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
    live_config = LiveConfig(
        rates=[float(x) for x in args.rates.split(",") if x.strip()],
        duration_s=args.live_duration,
        drain_s=args.live_drain,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="ffe-bench-"))
    if (ROOT / ".env").exists():
        print("!! a .env exists in the repository: the worker reads it too", flush=True)
    bench_redis = BenchRedis(args.redis_url, args.redis_db, own=args.own_redis)
    sim = receiver = None
    outcomes: list[Outcome] = []
    live: list[LiveOutcome] = []
    try:
        sim = Simulator(funnelfox_secret(), log_dir)
        receiver = Receiver(new_webhook_secret(), log_dir)
        where = "embedded" if bench_redis.embedded else "found"
        print(f"redis {bench_redis.url} ({where})", flush=True)
        print(f"simulator {sim.api_url}, receiver {receiver.hook_url}", flush=True)
        bench = contestants.Bench(bench_redis, sim, receiver, log_dir, args.sessions, args.timeout)
        for latency in latencies:
            every = _runs(chosen, noop_threads=not args.no_noop_threads)
            for run_one in every + _ledger_rounds(chosen, args.ledger_rounds):
                outcome = run_one(bench, latency)
                _progress(outcome)
                outcomes.append(outcome)
            if "live" in chosen:
                for rate in live_config.rates:
                    step = LiveStep(bench, live_config, latency, rate).run()
                    _live_progress(step)
                    live.append(step)
        took = time.monotonic() - started
        settings = [
            f"- live: rates {args.rates} events/s, {args.live_duration:g} s a step, deadline "
            f"{args.live_drain:g} s after the last POST" + (" (--quick)" if args.quick else ""),
            f"- the whole run took {took / 60:.1f} min",
        ]
        machine = report.machine(
            args.sessions, bench_redis.server_version(), bench_redis.embedded is not None, settings
        )
        _print(outcomes, live)
        if not args.no_write:
            args.results.write_text(report.markdown(outcomes, machine, live))
            print(f"\nwritten to {args.results}")
        return outcomes, live
    finally:
        for service in (receiver, sim):
            if service is not None:
                service.close()
        stop_all()
        with contextlib.suppress(redis.RedisError):
            bench_redis.flush()  # leave nothing but the owner mark behind
        bench_redis.close()
        _keep_logs_if_needed(log_dir, outcomes, live, args.keep_logs)


def _keep_logs_if_needed(
    log_dir: Path, outcomes: Sequence[Outcome], live: Sequence[LiveOutcome], keep: bool
) -> None:
    """Keep the processes' logs when something went wrong (or when asked), else remove them."""
    clean = bool(outcomes or live) and not any(
        o.problems or o.log_lines for o in [*outcomes, *live]
    )
    if clean and not keep:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"\nlogs of every process kept in {log_dir}", flush=True)


def _runs(chosen: set[str], *, noop_threads: bool) -> list[Run]:
    """The runs at one latency, in order."""
    runs: list[Run] = []
    if "ours" in chosen:
        runs.append(contestants.run_ours)
    if "ledger" in chosen:  # the same worker without the ledger: what the ledger costs
        runs.append(partial(contestants.run_ours, ledger=False))
    if "floor" in chosen:
        runs.append(contestants.run_floor)
    if "textbook" in chosen:
        runs.append(contestants.run_textbook)
    if "noop" in chosen:
        runs.append(partial(contestants.run_noop, pool="prefork", concurrency=2))
        if noop_threads:
            runs.append(partial(contestants.run_noop, pool="threads", concurrency=32))
    return runs


def _ledger_rounds(chosen: set[str], rounds: int) -> list[Run]:
    """Rounds 2… of the pair with and without the ledger, alternating which runs first (the
    first round runs with the other contestants)."""
    if "ledger" not in chosen or "ours" not in chosen:
        return []
    runs: list[Run] = []
    for round_no in range(2, rounds + 1):
        pair = [
            partial(contestants.run_ours, ledger=False, round_no=round_no),
            partial(contestants.run_ours, ledger=True, round_no=round_no),
        ]
        runs += pair if round_no % 2 == 0 else pair[::-1]
    return runs


def _print(outcomes: Sequence[Outcome], live: Sequence[LiveOutcome]) -> None:
    if outcomes:
        print("\n" + report.table(outcomes))
    if live:
        print("\n" + live_report.live_table(live))
    for title, lines in (
        ("Ratios", [*report.ratios(outcomes), *live_report.floor_ratios(outcomes)]),
        ("Targets (throughput and memory)", report.targets(outcomes)),
        ("Targets (the ledger's cost)", report.ledger_targets(outcomes)),
        ("Targets (live path)", live_report.live_targets(outcomes, live)),
        (
            "Problems",
            [
                *report.problems(outcomes, max_log_lines=5),
                *live_report.live_problems(live, max_log_lines=5),
            ],
        ),
    ):
        if lines:
            print(f"\n{title}\n" + "\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; non-zero when any run fell short."""
    args = build_parser().parse_args(argv)
    settle(args)
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
        outcomes, live = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; every child process stopped", file=sys.stderr)
        return 130
    print(f"\ntook {time.monotonic() - started:.0f} s")
    short = [f"{o.contestant} @ {o.latency_ms:g} ms" for o in outcomes if o.delivered < o.n]
    short += [f"live {o.rate:g}/s @ {o.latency_ms:g} ms" for o in live if not o.sent]
    if short:
        print(f"\n!! SHORTFALL in {len(short)} run(s): {', '.join(short)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
