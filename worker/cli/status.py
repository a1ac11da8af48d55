"""``python -m worker status [ID ...]``: a unit's story from the ledger, or the summary.

An id is a session's (its conversions listed too) or a conversion's event id.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
import redis

from config import Settings
from worker.keys import LEDGER_COUNTS, LEDGER_OPEN, ledger_conversions_key, ledger_key
from worker.ledger import FINISHED, STAGE_NAMES, UNFINISHED
from worker.redis_clients import sync_client, text

# Unknown ids: the ledger has no entry (never accepted, or finished longer than LEDGER_TTL_S).
EXIT_UNKNOWN = 1


def main(
    settings: Settings,
    session_ids: Sequence[str],
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Print one JSON object a line; exit 1 if any id is unknown."""
    client = sync_client(settings.redis_url)
    try:
        if not session_ids:
            out.write(orjson.dumps(summary(client)).decode() + "\n")
            return 0
        unknown = 0
        entries = read_entries(client, session_ids)
        conversions = read_conversions(client, session_ids)
        for session_id, entry, listed in zip(session_ids, entries, conversions, strict=True):
            if entry is None and not listed:
                unknown += 1
                print(f"{session_id}: unknown (never accepted, or expired)", file=err)
                continue
            found = describe_entry(session_id, entry or {})
            if "type" not in found:  # a session: and the conversions of it accepted
                found["conversions"] = listed
            out.write(orjson.dumps(found).decode() + "\n")
        return EXIT_UNKNOWN if unknown else 0
    finally:
        client.close()


_STATE_NAMES = {"q": "queued", "r": "retrying", "d": "delivered", "x": "dead", "s": "filtered"}


def describe_entry(session_id: str, entry: dict[str, str]) -> dict[str, Any]:
    """A ledger entry as ``python -m worker status`` prints it; a conversion's (``k`` set)
    names its event id, type and session."""
    destinations = {
        name.removeprefix("d:"): _STATE_NAMES.get(value, value)
        for name, value in sorted(entry.items())
        if name.startswith("d:")
    }
    fetch = {"q": "queued", "r": "retrying", "d": "done", "x": "dead"}.get(entry.get("f", ""))
    next_at = entry.get("n")
    ids: dict[str, Any] = {"session_id": session_id}
    if "k" in entry:
        ids = {"event_id": session_id, "type": entry["k"], "session_id": entry.get("ss")}
    return {
        **ids,
        "state": entry.get("st"),
        "fetch": fetch,
        "destinations": destinations,
        "accepted_at": _iso(entry.get("a")),
        "source": entry.get("s"),
        "event_id": entry.get("e") or ids.get("event_id"),
        "next_attempt_at": _iso(next_at) if next_at else None,
        "attempts": [_attempt(line, float(entry.get("a") or 0)) for _, line in sorted(_log(entry))],
    }


def _log(entry: dict[str, str]) -> list[tuple[int, str]]:
    """The attempt fields (l1, l2, …) of an entry with their numbers."""
    return [
        (int(name[1:]), line)
        for name, line in entry.items()
        if name.startswith("l") and name[1:].isdigit()
    ]


def _attempt(line: str, accepted_at: float) -> dict[str, Any]:
    parts = [*line.split(","), "", ""]
    code, since_ms, outcome, detail, duration_ms = parts[:5]
    stage = STAGE_NAMES.get(code) or code.replace("d:", "deliver:", 1)
    at = accepted_at + float(since_ms or 0) / 1000
    attempt: dict[str, Any] = {"stage": stage, "at": _iso(str(at)), "outcome": outcome}
    if detail:
        attempt["detail"] = detail
    if duration_ms:
        attempt["duration_s"] = float(duration_ms) / 1000
    return attempt


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    moment = datetime.fromtimestamp(float(value), UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_entries(client: redis.Redis, session_ids: Sequence[str]) -> list[dict[str, str] | None]:
    """The raw entries of these sessions (None where the ledger has none), one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for session_id in session_ids:
            pipe.hgetall(ledger_key(session_id))
        replies = pipe.execute()
    return [{text(k): text(v) for k, v in reply.items()} or None for reply in replies]


def read_conversions(client: redis.Redis, session_ids: Sequence[str]) -> list[list[dict[str, Any]]]:
    """For each id, the conversions accepted for it as a session, oldest first: event id,
    type and state (two round trips)."""
    with client.pipeline(transaction=False) as pipe:
        for session_id in session_ids:
            pipe.zrange(ledger_conversions_key(session_id), 0, -1)
        listed = [[text(event_id) for event_id in ids] for ids in pipe.execute()]
    with client.pipeline(transaction=False) as pipe:
        for event_id in (event_id for ids in listed for event_id in ids):
            pipe.hmget(ledger_key(event_id), "k", "st")
        states = iter(pipe.execute())
    found = []
    for ids in listed:
        rows = []
        for event_id in ids:
            kind, state = next(states)
            rows.append(
                {
                    "event_id": event_id,
                    "type": text(kind) if kind else None,
                    "state": text(state) if state else None,
                }
            )
        found.append(rows)
    return found


def summary(client: redis.Redis, now: float | None = None) -> dict[str, Any]:
    """Counts per state and the oldest unfinished session."""
    now = time.time() if now is None else now
    counts = {text(k): int(v) for k, v in client.hgetall(LEDGER_COUNTS).items()}
    oldest: list[tuple[bytes, float]] = client.zrange(  # type: ignore[assignment]
        LEDGER_OPEN, 0, 0, withscores=True
    )
    found: dict[str, Any] = {
        "unfinished": {state: max(0, counts.get(state, 0)) for state in UNFINISHED},
        "finished_total": {state: counts.get(f"finished:{state}", 0) for state in FINISHED},
        "oldest_unfinished": None,
    }
    if oldest:
        member, accepted_at = oldest[0]
        found["oldest_unfinished"] = {
            "session_id": text(member),
            "accepted_at": _iso(str(accepted_at)),
            "age_s": round(now - float(accepted_at), 3),
        }
    return found
