"""``python -m bench.failover``: what a Redis failover loses, and what waiting for a replica costs.

1. **Loss.** A primary, a replica and three Sentinels (workshop.sentinel); eight writers
   RPUSH numbered items as fast as they can, each item counted once the primary answers
   (and, in ``wait`` mode, once ``WAIT 1`` says the replica has it). After a second the
   primary's host "dies": the replication link (a proxy delaying each byte by the given
   milliseconds) is cut and the primary SIGKILLed. Once the Sentinels have promoted the
   replica, every counted item missing from it is lost. Modes: ``async`` (Redis's default),
   ``min-replicas`` (``min-replicas-to-write 1``, ``min-replicas-max-lag 10`` on every data
   node) and ``wait`` (``worker.redis_clients.wait_for_replicas_sync`` after each write).
2. **Cost.** The web: line against the same kind of cluster, with REDIS_WAIT_REPLICAS 0 and
   1: how long FunnelFox waits for a 202, over sequential requests.

Prints two Markdown tables; README's Deploying section quotes them.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench.harness import Child, base_env, wait_until
from worker.redis_clients import primary_id_sync, wait_for_replicas_sync
from workshop.procfile import local_command, procfile_command
from workshop.sentinel import SentinelCluster

MODES = {
    "async": (),
    "min-replicas": ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"),
    "wait": (),
}
WRITERS = 8
SECRET = "bench-failover-secret"


@dataclass
class LossRun:
    """One kill: how many writes were acknowledged, how many of them the new primary lacks."""

    mode: str
    delay_ms: float
    acknowledged: int
    lost: int
    refused: int
    latencies_s: list[float]
    writing_s: float


def loss_run(mode: str, delay_ms: float) -> LossRun:
    """Writers on the primary, its host killed after a second, the survivors counted."""
    with SentinelCluster(data_args=MODES[mode], replication_delay_ms=delay_ms) as cluster:
        port = cluster.primary_port()
        acknowledged: list[list[int]] = [[] for _ in range(WRITERS)]
        latencies: list[float] = []
        refused = [0]
        stop = threading.Event()

        def write(index: int) -> None:
            client = redis.Redis(port=port, socket_timeout=2)
            primary = primary_id_sync(client)
            n = 0
            while not stop.is_set():
                n += 1
                started = time.perf_counter()
                try:
                    client.rpush(f"w{index}", n)
                    if (
                        mode == "wait"
                        and wait_for_replicas_sync(client, 1, 0.5, primary=primary) < 1
                    ):
                        refused[0] += 1
                        continue
                except redis.ResponseError:  # NOREPLICAS: refused, so not acknowledged
                    refused[0] += 1
                    continue
                except redis.RedisError:
                    return  # the primary is gone
                latencies.append(time.perf_counter() - started)
                acknowledged[index].append(n)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # the writing under measure, not a wait for a condition
        old = cluster.kill_primary()
        writing_s = time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join(10)
        new = cluster.wait_for_new_primary(old)
        client = new.client(timeout_s=5)
        lost = 0
        for index, items in enumerate(acknowledged):
            present = {int(v) for v in client.lrange(f"w{index}", 0, -1)}
            lost += sum(1 for n in items if n not in present)
        client.close()
        return LossRun(
            mode,
            delay_ms,
            sum(len(items) for items in acknowledged),
            lost,
            refused[0],
            latencies,
            writing_s,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ingress_latencies(
    wait_replicas: int, delay_ms: float, requests: int, log_dir: Path
) -> list[float]:
    """Seconds to a 202 for ``requests`` sequential events, web: on a Sentinel cluster."""
    with SentinelCluster(replication_delay_ms=delay_ms) as cluster:
        port = _free_port()
        env = base_env(
            {
                "REDIS_URL": cluster.url(),
                "FUNNELFOX_SECRET": SECRET,
                "REDIS_WAIT_REPLICAS": str(wait_replicas),
                "PORT": str(port),
            }
        )
        command = local_command(procfile_command("web"))
        command = [part.replace("${PORT:-8000}", str(port)) for part in command]
        web = Child(f"web-wait{wait_replicas}-{delay_ms:g}ms", command, env, log_dir)
        url = f"http://127.0.0.1:{port}"
        try:
            assert wait_until(lambda: _answers(f"{url}/healthz"), 30), web.log_path.read_text()
            timings = []
            with httpx.Client(base_url=url, timeout=5) as client:
                for n in range(requests + 20):
                    body = {
                        "id": f"evt_{n}",
                        "type": "onboarding.completed",
                        "created_at": 1716672462,
                        "is_sandbox": False,
                        "project_id": "p",
                        "funnel_id": "f",
                        "session_id": f"ses_{n}",
                    }
                    started = time.perf_counter()
                    response = client.post(
                        "/webhooks/funnelfox", json=body, headers={"Fox-Secret-Key": SECRET}
                    )
                    assert response.status_code == 202, response.text
                    if n >= 20:  # the first ones warm up connections
                        timings.append(time.perf_counter() - started)
            return timings
        finally:
            web.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def loss_table(runs: Sequence[LossRun]) -> str:
    lines = [
        "| replication link | mode | writes acknowledged/s | lost per kill (each run) "
        "| write p50 / p99 ms |",
        "|---|---|---:|---|---:|",
    ]
    cells: dict[tuple[float, str], list[LossRun]] = {}
    for run in runs:
        cells.setdefault((run.delay_ms, run.mode), []).append(run)
    for (delay, mode), group in cells.items():
        rate = statistics.mean(r.acknowledged / r.writing_s for r in group)
        latencies = sorted(s for r in group for s in r.latencies_s)
        cuts = statistics.quantiles(latencies, n=100)
        link = "same host" if delay == 0 else f"{delay:g} ms each way"
        lost = ", ".join(str(r.lost) for r in group)
        lines.append(
            f"| {link} | {mode} | {rate:,.0f} | {lost} | {_ms(cuts[49])} / {_ms(cuts[98])} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="kills per mode and link delay")
    parser.add_argument("--delays", default="0,1,5", help="replication link delays, ms")
    parser.add_argument("--modes", default=",".join(MODES), help="of: " + ", ".join(MODES))
    parser.add_argument("--requests", type=int, default=300, help="events per ingress run")
    parser.add_argument("--skip-ingress", action="store_true")
    args = parser.parse_args(argv)
    delays = [float(d) for d in args.delays.split(",")]
    runs: list[LossRun] = []
    for delay in delays:
        for mode in args.modes.split(","):
            for _ in range(args.runs):
                run = loss_run(mode, delay)
                print(
                    f"{mode:>12} link {delay:g} ms: {run.acknowledged} acknowledged, "
                    f"{run.lost} lost, {run.refused} refused",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(run)
    print(loss_table(runs))
    if args.skip_ingress:
        return 0
    print()
    print("| replication link | REDIS_WAIT_REPLICAS | 202 p50 ms | p99 ms | requests |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="ffe-bench-failover-") as logs:
        for delay in delays[:2]:
            for wait in (0, 1):
                timings = ingress_latencies(wait, delay, args.requests, Path(logs))
                cuts = statistics.quantiles(timings, n=100)
                link = "same host" if delay == 0 else f"{delay:g} ms each way"
                print(
                    f"| {link} | {wait} | {_ms(cuts[49])} | {_ms(cuts[98])} | {len(timings)} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
