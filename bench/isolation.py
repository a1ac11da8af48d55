"""``python -m bench.isolation``: does one bad destination slow the others down?

The same N sessions go to two healthy destinations (a webhook and a stream on the state
Redis), once with nothing else configured, once beside a third that answers at once (what any
third destination costs on these cores), and once beside each kind of bad destination: one
that hangs to its timeout, one that answers 410 Gone, one paced by a rate limit. The Procfile's
worker on the shipped defaults; the scenarios take turns, ``--rounds`` times, so load from
elsewhere on the machine falls on all of them alike. Printed: the time from the worker being
ready until both healthy destinations have every session, each round and the median, and each
scenario's median as a ratio of the one without a bad destination.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.harness import Child, base_env, enqueue, wait_until
from bench.services import BenchRedis, Receiver, Simulator, funnelfox_secret, webhook_secret
from workshop.procfile import local_command, procfile_command
from workshop.receiver import WebhookReceiver

STREAM = "bench:isolation"
BAD_TIMEOUT_S = 10
RATE_PER_S = 20
# "answering": a third destination that is fine, what any third one costs on these cores.
SCENARIOS = ("absent", "answering", "hanging", "gone", "limited")


def destinations(scenario: str, healthy_url: str, bad_url: str) -> str:
    """The DESTINATIONS_FILE of one scenario."""
    text = f"""
[[destinations]]
name = "healthy"
type = "webhook"
url = "{healthy_url}"
secret = "${{HEALTHY_KEY}}"

[[destinations]]
name = "warehouse"
type = "redis_stream"
stream = "{STREAM}"
"""
    if scenario == "absent":
        return text
    extra = f"timeout_s = {BAD_TIMEOUT_S}\n"
    if scenario == "limited":
        extra += f"rate_limit_per_s = {RATE_PER_S}\n"
    return (
        text
        + f"""
[[destinations]]
name = "bad"
type = "webhook"
url = "{bad_url}"
secret = "${{BAD_KEY}}"
{extra}"""
    )


def run_one(
    scenario: str,
    redis_: BenchRedis,
    sim: Simulator,
    healthy: Receiver,
    bad: WebhookReceiver,
    bad_key: str,
    n: int,
    log_dir: Path,
) -> float | None:
    """Seconds from ready to every session at both healthy destinations (None: not in time)."""
    redis_.flush()
    sim.configure(0)
    healthy.reset()
    bad.set_latency(120_000 if scenario == "hanging" else 0)
    bad.set_outage(410 if scenario == "gone" else None)
    path = log_dir / f"{scenario}.toml"
    path.write_text(destinations(scenario, healthy.hook_url, bad.url))
    env = base_env(
        {
            "REDIS_URL": redis_.url,
            "FUNNELFOX_API_URL": sim.api_url,
            "FUNNELFOX_SECRET": sim.secret,
            "DESTINATIONS_FILE": str(path),
            "HEALTHY_KEY": healthy.secret,
            "BAD_KEY": bad_key,
        }
    )
    ids = [f"iso_{i}" for i in range(1, n + 1)]
    enqueue(ids, env).check_returncode()
    child = Child(f"isolation-{scenario}", local_command(procfile_command("worker")), env, log_dir)
    try:
        if child.wait_for(" ready.", 60) is None:
            raise SystemExit(f"the worker did not start: see {child.log_path}")
        started = time.monotonic()
        if healthy.wait_distinct(n, 300) < n:
            return None
        in_stream = lambda: redis_.client.xlen(STREAM) >= n  # noqa: E731
        if not wait_until(in_stream, max(1.0, 300 - (time.monotonic() - started))):
            return None
        return time.monotonic() - started
    finally:
        child.stop(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--redis-db", type=int, default=14)
    parser.add_argument("--own-redis", action="store_true", help="a redis-server of its own")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    log_dir = Path(tempfile.mkdtemp(prefix="ffe-bench-isolation-"))
    redis_ = BenchRedis(args.redis_url, args.redis_db, own=args.own_redis)
    sim = Simulator(funnelfox_secret(), log_dir)
    healthy = Receiver(webhook_secret(), log_dir)
    bad_key = webhook_secret()
    bad = WebhookReceiver(secret=bad_key, keep_bodies=False)
    bad.start()
    figures: dict[str, list[float | None]] = defaultdict(list)
    try:
        for round_no in range(1, args.rounds + 1):
            order = scenarios if round_no % 2 else scenarios[::-1]
            for scenario in order:
                took = run_one(scenario, redis_, sim, healthy, bad, bad_key, args.sessions, log_dir)
                figures[scenario].append(took)
                shown = "not in 300 s" if took is None else f"{took:.1f} s"
                print(f"round {round_no} {scenario:8} {shown}", flush=True)
    finally:
        bad.stop()
        healthy.close()
        sim.close()
        redis_.close()
    print(f"\n{args.sessions:,} sessions to a webhook and a stream, {args.rounds} round(s):")
    base = _median(figures.get("absent", []))
    for scenario in scenarios:
        median = _median(figures[scenario])
        ratio = f"{median / base:.2f}× the time without" if median and base else "n/a"
        rounds = ", ".join("—" if t is None else f"{t:.1f}" for t in figures[scenario])
        shown = "n/a" if median is None else f"{median:.1f} s"
        print(f"  {scenario:8} median {shown} ({rounds}); {ratio}")
    print(f"logs: {log_dir}")
    return 0


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known and len(known) == len(values) else None


if __name__ == "__main__":
    raise SystemExit(main())
