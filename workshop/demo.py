"""``make demo``: the whole job end to end on this machine, against the FunnelFox SIMULATOR.

Starts what it needs (Redis if none answers at REDIS_URL, the simulator, a webhook receiver,
one worker exactly as the Procfile runs it), enqueues sample sessions with the CLI, and shows
the enriched, signed payloads as they arrive. Nothing here talks to the real FunnelFox API.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from worker.deadletters import record_key
from worker.keys import DEAD_LETTERS, claim_key, delivered_key
from workshop.funnelfox import DEFAULT_SECRET, FunnelFoxSimulator
from workshop.procfile import local_command, procfile_command
from workshop.receiver import DEMO_WEBHOOK_SECRET, Attempt, WebhookReceiver
from workshop.redis_server import ensure_redis

ROOT = Path(__file__).resolve().parent.parent
STREAM = "funnelfox:demo:enriched"
TIMEOUT_S = 90


def sample_ids(run: str) -> tuple[list[str], list[str], list[str]]:
    """(delivered, dead-lettered, refused) ids; fault tokens tell the simulator what to do."""
    delivered = [f"ses_demo{run}{i:02d}" for i in range(8)]
    delivered += [f"ses_demo{run}-anon", f"ses_demo{run}-extra", f"ses_demo{run}-s503x1"]
    dead = [f"ses_demo{run}-s404"]
    refused = ["../../not-an-id"]
    return delivered, dead, refused


def describe(attempt: Attempt) -> str:
    """One line per arrival: who, signature, and the headline of the enrichment."""
    payload: Any = attempt.payload or {}
    enrichment = payload.get("data", {}).get("enrichment", {})
    # A part is null when the session lacked what it is read from (no user_agent, ...).
    device, geo, utm = (
        enrichment.get("device") or {},
        enrichment.get("geo") or {},
        enrichment.get("utm") or {},
    )
    answers = sum(len(v) for v in (enrichment.get("answers") or {}).values())
    return (
        f"  <- {attempt.session_id:<28} {'signature ok' if attempt.verified else 'BAD SIGNATURE'}"
        f" | {device.get('type')}, {device.get('os')} {device.get('os_version') or ''}".rstrip()
        + f", {device.get('browser')}"
        f" | {geo.get('country_name')} {geo.get('city') or ''} ({geo.get('utc_offset')})"
        f" | utm_source={utm.get('source')} | {answers} answers"
    )


def main() -> int:
    """Run the demo; exit 0 when every expected session arrived and the rest were explained."""
    print("funnelfox-enricher demo: runs against the bundled FunnelFox SIMULATOR, not the real API")
    redis_url, embedded = ensure_redis(os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    print(f"  redis:     {redis_url}{' (embedded, started for this demo)' if embedded else ''}")
    simulator = FunnelFoxSimulator(secret=DEFAULT_SECRET)
    simulator.start()
    print(f"  simulator: {simulator.base_url}")
    printing = threading.Lock()

    def show(attempt: Attempt) -> None:
        with printing:
            print(describe(attempt), flush=True)

    receiver = WebhookReceiver(secret=DEMO_WEBHOOK_SECRET, on_attempt=show)
    receiver.start()
    print(f"  receiver:  {receiver.url} (verifies Standard Webhooks signatures)")
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "FUNNELFOX_API_URL": simulator.base_url,
        "FUNNELFOX_SECRET": DEFAULT_SECRET,
        "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": DEMO_WEBHOOK_SECRET,
        "OUTPUT_STREAM": STREAM,
        "RETRY_BACKOFF_BASE_S": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    run = secrets.token_hex(3)
    delivered, dead, refused = sample_ids(run)
    client = redis.Redis.from_url(redis_url)
    worker: subprocess.Popen[bytes] | None = None
    try:
        print(f"\n$ python -m worker enqueue - < ({len(delivered + dead + refused)} ids)")
        enqueue = subprocess.run(
            [sys.executable, "-m", "worker", "enqueue", "-"],
            input="\n".join(delivered + dead + refused) + "\n",
            env=env,
            cwd=ROOT,
            text=True,
            capture_output=True,
            check=False,
        )
        print(enqueue.stderr.rstrip())
        default_log = Path(tempfile.gettempdir()) / "funnelfox-demo-worker.log"
        log_path = Path(os.environ.get("DEMO_WORKER_LOG", default_log))
        print(f"\nstarting the worker (Procfile worker: line; its log: {log_path})")
        with log_path.open("wb") as log:
            worker = subprocess.Popen(  # noqa: S603 - the Procfile line, no shell
                local_command(procfile_command("worker")), env=env, cwd=ROOT, stdout=log, stderr=log
            )
        print("payloads arriving at the receiver:")
        arrived = receiver.wait_for(len(delivered), timeout=TIMEOUT_S, distinct=True)
        deadline = time.monotonic() + 15
        while not all(client.hexists(DEAD_LETTERS, record_key("fetch", i)) for i in dead):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return report(client, receiver, delivered, dead, arrived)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        cleanup(client, delivered + dead)
        client.close()
        receiver.stop()
        simulator.stop()
        if embedded is not None:
            embedded.close()


def report(
    client: redis.Redis,
    receiver: WebhookReceiver,
    delivered: list[str],
    dead: list[str],
    arrived: bool,
) -> int:
    """Print what happened, with one payload in full; the exit status says if it all worked."""
    got = {d.session_id for d in receiver.deliveries()}
    in_stream = client.xlen(STREAM)
    print(
        f"\nwebhook: {len(got & set(delivered))}/{len(delivered)} sessions delivered, "
        f"all signatures verified: {all(d.verified for d in receiver.deliveries())}"
    )
    print(f"stream {STREAM}: {in_stream} entries")
    for session_id in dead:
        raw = client.hget(DEAD_LETTERS, record_key("fetch", session_id))
        record = json.loads(raw) if raw else None
        print(
            f"dead letter: {session_id}: {record['reason'] if record else 'MISSING'}"
            f"{' - ' + record['error'] if record else ''}"
        )
    example = next((d for d in receiver.deliveries() if d.session_id == delivered[0]), None)
    if example is not None:
        print(f"\none payload in full (webhook-id {example.webhook_id}):")
        print(json.dumps(example.payload, indent=2, ensure_ascii=False))
    ok = (
        arrived
        and set(delivered) <= got
        and all(client.hexists(DEAD_LETTERS, record_key("fetch", i)) for i in dead)
    )
    print("\ndemo OK" if ok else "\ndemo FAILED: see the worker log above")
    return 0 if ok else 1


def cleanup(client: redis.Redis, session_ids: list[str]) -> None:
    """Remove what the demo wrote, so it leaves a shared Redis as it found it."""
    keys = [
        key(sink, sid)
        for sid in session_ids
        for key in (delivered_key, claim_key)
        for sink in ("webhook", "stream")
    ]
    client.delete(STREAM, *keys)
    client.hdel(DEAD_LETTERS, *(record_key("fetch", sid) for sid in session_ids))


if __name__ == "__main__":
    sys.exit(main())
