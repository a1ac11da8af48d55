"""The textbook recipe: one Celery task per session id, a sync GET and a signed POST.

``celery -A bench.textbook worker --pool threads -c 32``: late acknowledgements and Celery's
defaults otherwise; one ``httpx.Client`` per process (a client per task is 5-6x slower); no
log line per task or per request.
Reads the worker's variables: REDIS_URL, FUNNELFOX_API_URL, FUNNELFOX_SECRET, WEBHOOK_URL,
WEBHOOK_SECRET.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

import httpx
from celery import Celery
from kombu.entity import Queue
from standardwebhooks.webhooks import Webhook

from bench.quiet import quiet_per_task_lines

QUEUE = "bench.textbook"
TASK = "bench.textbook.fetch_and_post"
CONCURRENCY = 32

app = Celery("bench-textbook", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13"))
app.conf.update(
    task_default_queue=QUEUE,
    task_queues=[Queue(QUEUE)],
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
)
# A log line per task and per request measures logging, not the recipe.
quiet_per_task_lines("httpx", "httpcore")


@dataclass(frozen=True)
class _Config:
    api_url: str
    fox_secret: str
    webhook_url: str
    signer: Webhook


@cache
def _config() -> _Config:
    # Read on first use, not at import: the harness imports this module for its names only.
    return _Config(
        api_url=os.environ["FUNNELFOX_API_URL"].rstrip("/"),
        fox_secret=os.environ["FUNNELFOX_SECRET"],
        webhook_url=os.environ["WEBHOOK_URL"],
        signer=Webhook(os.environ["WEBHOOK_SECRET"]),
    )


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def _http() -> httpx.Client:
    """The process's one client, shared by every thread (httpx.Client is thread-safe)."""
    global _client
    with _client_lock:
        if _client is None:
            # Keep-alive pool as wide as the thread pool, so connections are reused, not churned.
            limits = httpx.Limits(max_keepalive_connections=CONCURRENCY)
            _client = httpx.Client(timeout=10.0, limits=limits)
        return _client


@app.task(name=TASK)
def fetch_and_post(session_id: str) -> None:
    """GET the session from FunnelFox and POST it, signed, to the webhook."""
    config, http = _config(), _http()
    response = http.get(
        f"{config.api_url}/sessions/{session_id}", headers={"Fox-Secret": config.fox_secret}
    )
    response.raise_for_status()
    body = json.dumps({"type": "session.fetched", "data": {"session": response.json()}})
    message_id = f"msg_{session_id}"
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": config.signer.sign(message_id, now, body),
    }
    http.post(config.webhook_url, content=body, headers=headers).raise_for_status()
