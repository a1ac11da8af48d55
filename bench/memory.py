"""``python -m bench.memory``: the bytes each kind of record takes in Redis, after a real run.

A Redis of its own, the FunnelFox simulator, the webhook receiver and the Procfile's worker
with the shipped defaults (both sinks on). Sessions with realistic ids (``ses_`` + 26) are
queued by the CLI, 100 a message; a worker that takes only the fetch queue builds every
payload, so delivery messages pile up; then a full worker delivers them. Some sessions are
refused (404 at FunnelFox, 410 at the webhook), so dead letters exist; ingress event markers
are written by the ingress's own code.

Each kind is measured twice: ``MEMORY USAGE`` (every element sampled) divided per record, and
the drop of ``used_memory`` when all of that kind is deleted, divided the same way; the second
includes what ``MEMORY USAGE`` leaves out (the expires table, allocator rounding).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.asyncio as aioredis

from bench.harness import Child, base_env, enqueue, stop_all, wait_until
from bench.services import Receiver, Simulator, funnelfox_secret, webhook_secret
from worker.ingress.markers import EventMarkers
from worker.keys import (
    DEAD_LETTER_PAYLOADS,
    DEAD_LETTERS,
    FETCH_QUEUE,
    KOMBU_UNACKED,
    METRICS,
    delivered_key,
    delivery_queue,
    event_key,
)
from workshop.procfile import local_command, procfile_command
from workshop.redis_server import EmbeddedRedis

STREAM = "funnelfox:enriched"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass
class Row:
    """One kind of record: how many, and bytes each by both measures."""

    kind: str
    count: int
    usage_each: float
    drop_each: float
    note: str = ""


def ulid_like(prefix: str) -> str:
    """An id shaped like FunnelFox's: a prefix and 26 Crockford base32 characters."""
    return prefix + "".join(secrets.choice(_CROCKFORD) for _ in range(26))


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def usage(client: redis.Redis, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)


def measure(client: redis.Redis, kind: str, keys: list[str], count: int, note: str = "") -> Row:
    """MEMORY USAGE of ``keys`` and the used_memory they free when deleted, per record."""
    total = sum(usage(client, key) for key in keys)
    before = used(client)
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
    time.sleep(0.2)  # let Redis's lazy frees and client buffers settle before reading again
    drop = before - used(client)
    return Row(kind, count, total / max(1, count), drop / max(1, count), note)


def _worker(env: dict[str, str], log_dir: Path, name: str, *args: str) -> Child:
    child = Child(name, [*local_command(procfile_command("worker")), *args], env, log_dir)
    if child.wait_for(" ready.", 60) is None:
        raise RuntimeError(f"{name} did not start:\n{child.output()}")
    return child


def _metric(client: redis.Redis, field: str) -> int:
    return int(client.hget(METRICS, field) or 0)


def run(n: int, refused: int, log_dir: Path) -> list[Row]:
    """One real run, then every kind measured; the rows of the table."""
    rows: list[Row] = []
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        sim = Simulator(funnelfox_secret(), log_dir)
        receiver = Receiver(webhook_secret(), log_dir)
        env = base_env(
            {
                "REDIS_URL": server.url,
                "FUNNELFOX_API_URL": sim.api_url,
                "FUNNELFOX_SECRET": sim.secret,
                "WEBHOOK_URL": receiver.hook_url,
                "WEBHOOK_SECRET": receiver.secret,
                "OUTPUT_STREAM": STREAM,
            }
        )
        try:
            rows += _run_with(client, env, n, refused, receiver, log_dir)
            rows.append(asyncio.run(_event_markers(server.url, client, n)))
        finally:
            stop_all()
            receiver.close()
            sim.close()
            client.close()
    return rows


def _run_with(
    client: redis.Redis,
    env: dict[str, str],
    n: int,
    refused: int,
    receiver: Receiver,
    log_dir: Path,
) -> list[Row]:
    plain = [ulid_like("ses_") for _ in range(n)]
    gone = [ulid_like("ses_") + "-h410" for _ in range(refused)]
    missing = [ulid_like("ses_") + "-s404" for _ in range(refused)]
    before = used(client)
    enqueue(plain + gone + missing, env).check_returncode()
    time.sleep(0.2)  # client buffers settle
    messages = int(client.llen(FETCH_QUEUE))
    fetch_row = Row(
        "queued fetch message (100 ids)",
        messages,
        usage(client, FETCH_QUEUE) / messages,
        (used(client) - before) / messages,
        note="used_memory grown by the enqueue",
    )
    # Only the fetch queue: every payload is built and its delivery messages wait.
    fetcher = _worker(env, log_dir, "fetcher", "-Q", FETCH_QUEUE)
    fetched = n + refused
    ok = wait_until(
        lambda: _metric(client, "sessions_fetched|") >= fetched and client.hlen(KOMBU_UNACKED) == 0,
        300,
    )
    fetcher.stop()
    if not ok:
        raise RuntimeError(f"the fetch did not finish:\n{fetcher.output()}")
    hook_queue = delivery_queue("webhook")
    hook_messages = int(client.llen(hook_queue))
    delivery_row = Row(
        "queued delivery message (100 payloads)",
        hook_messages,
        usage(client, hook_queue) / hook_messages,
        0.0,
        note="one per sink",
    )
    deliverer = _worker(env, log_dir, "deliverer")
    ok = wait_until(
        lambda: (
            receiver.wait_distinct(n, 1.0) >= n
            and client.xlen(STREAM) >= fetched
            and client.hlen(DEAD_LETTERS) >= 2 * refused
            and client.llen(hook_queue) == 0
        ),
        300,
    )
    deliverer.stop()
    if not ok:
        raise RuntimeError(f"the delivery did not finish:\n{deliverer.output()}")
    # The queues are empty now; drain what kombu keeps besides, so drops are each kind's own.
    records = [k.decode() for k in client.scan_iter(delivered_key("*", "*"), count=1000)]
    return [
        fetch_row,
        delivery_row,
        measure(client, "delivery record (per session and sink)", records, len(records)),
        measure(client, "stream entry (XADD payload)", [STREAM], int(client.xlen(STREAM))),
        measure(client, "dead letter record", [DEAD_LETTERS], int(client.hlen(DEAD_LETTERS))),
        measure(
            client,
            "dead letter payload (delivery stage only)",
            [DEAD_LETTER_PAYLOADS],
            int(client.hlen(DEAD_LETTER_PAYLOADS)),
        ),
    ]


async def _event_markers(url: str, client: redis.Redis, n: int) -> Row:
    """Ingress markers as the ingress writes them: claimed, then confirmed for 7 days."""
    async_client = aioredis.Redis.from_url(url)
    markers = EventMarkers(async_client, dedupe_ttl_s=7 * 24 * 3600)
    ids = [ulid_like("evt_") for _ in range(n)]
    for event_id in ids:
        await markers.claim(event_id)
        await markers.confirm(event_id)
    await async_client.aclose()
    keys = [event_key(event_id) for event_id in ids]
    return measure(client, "ingress event marker (ffe:event:<id>)", keys, n)


def table(rows: list[Row]) -> str:
    """The figures as a markdown table."""
    lines = [
        "| record | measured | MEMORY USAGE, bytes each | used_memory freed, bytes each |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        drop = f"{row.drop_each:,.0f}" if row.drop_each else "—"
        note = f" ({row.note})" if row.note else ""
        lines.append(f"| {row.kind}{note} | {row.count:,} | {row.usage_each:,.0f} | {drop} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--sessions", type=int, default=2000, metavar="N")
    parser.add_argument("--refused", type=int, default=100, metavar="N", help="404s and 410s")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="ffe-bench-memory-"))
    rows = run(args.sessions, args.refused, log_dir)
    print(table(rows))
    shutil.rmtree(log_dir, ignore_errors=True)  # a failed run raises first, keeping them
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
