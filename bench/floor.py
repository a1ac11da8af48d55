"""``python -m bench.floor``: the same per-session work as the worker, with no broker at all.

One process per core, each an asyncio (uvloop) loop with one aiohttp session and a bounded
number of sessions in flight: GET the session from FunnelFox, validate it
(``worker.validate.parse_session``), enrich it (``worker.enrich.enrich``), build the payload
(``worker.payload.build_payload``), sign it as the webhook sink does (``WebhookSink.headers``)
and POST it. No queue, no delivery record, no retry: the ceiling a queue-based design is
measured against. Reads the worker's variables (FUNNELFOX_API_URL, FUNNELFOX_SECRET,
WEBHOOK_URL, WEBHOOK_SECRET); ids are ``{prefix}_1`` … ``{prefix}_{n}``, dealt round-robin.

Prints `` ready.`` once every process has its session open, then works; when all are done it
prints a summary and waits for SIGTERM, so the harness reads the CPU of live processes.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier, Event
from typing import cast

import aiohttp
from pydantic import SecretStr

from worker.enrich import enrich
from worker.http import HttpSession
from worker.payload import build_payload
from worker.sinks.webhook import WebhookSink
from worker.validate import parse_session
from workshop.server import new_event_loop

CONCURRENCY = 100  # sessions in flight per process, as a batch of WORKER_BATCH_SIZE ids


async def _work(ids: Sequence[str], concurrency: int, ready: Barrier) -> tuple[int, int]:
    api_url = os.environ["FUNNELFOX_API_URL"].rstrip("/")
    fox = {"Fox-Secret": os.environ["FUNNELFOX_SECRET"], "Accept": "application/json"}
    hook_url = os.environ["WEBHOOK_URL"]
    # headers() signs without any I/O: the sink's HTTP session is never used here.
    sink = WebhookSink(
        cast(HttpSession, None), url=hook_url, secret=SecretStr(os.environ["WEBHOOK_SECRET"])
    )
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    done = failed = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        pending = iter(ids)

        async def one(session_id: str) -> None:
            async with http.get(f"{api_url}/sessions/{session_id}", headers=fox) as response:
                body = await response.read()
                response.raise_for_status()
            raw, session = parse_session(body, session_id)
            payload = build_payload(raw, enrich(session), None, datetime.now(UTC))
            headers = sink.headers(session_id, payload, datetime.now(UTC))
            async with http.post(hook_url, data=payload, headers=headers) as response:
                await response.read()
                response.raise_for_status()

        async def lane() -> None:
            nonlocal done, failed
            for session_id in pending:
                try:
                    await one(session_id)
                except Exception as exc:
                    failed += 1
                    print(f"floor: {session_id} failed: {type(exc).__name__}: {exc}", flush=True)
                else:
                    done += 1

        await asyncio.get_running_loop().run_in_executor(None, ready.wait)
        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return done, failed


def _process(ids: Sequence[str], concurrency: int, ready: Barrier, finished: Event) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent says when to go
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        done, failed = runner.run(_work(ids, concurrency, ready))
    print(f"floor: process {os.getpid()}: {done} delivered, {failed} failed", flush=True)
    # Stay alive (and measurable) until the parent is told to stop.
    finished.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Start one process per core, work, then wait for SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args(argv)
    ids = [f"{args.prefix}_{i}" for i in range(1, args.sessions + 1)]
    context = multiprocessing.get_context("fork")
    ready = context.Barrier(args.processes + 1)
    finished = context.Event()
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))
    processes = [
        context.Process(
            target=_process, args=(ids[k :: args.processes], args.concurrency, ready, finished)
        )
        for k in range(args.processes)
    ]
    for process in processes:
        process.start()
    ready.wait()
    print(
        f"floor: concurrency: {args.processes} (asyncio), {args.concurrency} in flight each; "
        "ready.",
        flush=True,
    )
    while not stopping:
        time.sleep(0.1)
    finished.set()
    for process in processes:
        process.join(10)
    return 0 if all(p.exitcode == 0 for p in processes) else 1


if __name__ == "__main__":
    sys.exit(main())
