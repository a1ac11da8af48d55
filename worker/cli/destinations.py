"""``python -m worker destinations [pause NAME | resume NAME]``: the fleet's destinations.

The listing comes from what the workers registered (no worker settings needed): each
destination's kind, target without credentials, filters, queue depth, whether it is paused
(by an operator or by its breaker), and its delivered and dead-lettered counts.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import orjson
import redis

from config import Settings
from worker.breaker import read_state, set_paused
from worker.fleet import registered_destinations
from worker.keys import METRICS, delivery_queue
from worker.redis_clients import sync_client

EXIT_UNKNOWN = 1


def main(
    settings: Settings,
    action: str | None,
    name: str | None,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """List, or pause / resume one destination."""
    client = sync_client(settings.redis_url)
    try:
        known = registered_destinations(client)
        if action is None:
            for line in listing(client, known):
                out.write(orjson.dumps(line).decode() + "\n")
            return 0
        assert name is not None
        if name not in known:
            names = ", ".join(known) or "none yet: start a worker"
            print(f"destinations: no destination {name!r} (registered: {names})", file=err)
            return EXIT_UNKNOWN
        set_paused(client, name, action == "pause")
        done = "paused: its deliveries wait" if action == "pause" else "resumed"
        print(f"destination {name} {done}", file=err)
        return 0
    finally:
        client.close()


def listing(client: redis.Redis, known: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per destination."""
    counts = _counts(client)
    lines = []
    for name, record in known.items():
        breaker = read_state(client, name)
        queue = record.get("queue", delivery_queue(name))
        lines.append(
            {
                "name": name,
                "type": record.get("type"),
                "target": record.get("target"),
                "filters": record.get("filters", {}),
                "queue": queue,
                "queue_depth": client.llen(queue),
                "paused": breaker["paused"],
                "breaker_open": breaker["open"],
                "delivered": counts.get(("sessions_delivered", f"sink={name}"), 0),
                "dead_lettered": sum(
                    n
                    for (metric, labels), n in counts.items()
                    if metric == "dead_letters" and f"stage=deliver:{name}" in labels.split(",")
                ),
            }
        )
    return lines


def _counts(client: redis.Redis) -> dict[tuple[str, str], int]:
    found = {}
    for field, value in client.hgetall(METRICS).items():
        text = field.decode() if isinstance(field, bytes) else field
        metric, _, labels = text.partition("|")
        found[(metric, labels)] = int(float(value))
    return found
