"""What one run found: timings from the simulator and receiver, broker queues, log problems."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.keys import KOMBU_UNACKED

_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Error:")
# Said by Celery to anyone running it as root: about the machine, not the worker.
_ROOT_WARNING = ("SecurityWarning", "superuser privileges", "_warn_or_raise_security_error")


@dataclass
class Outcome:
    """One contestant at one latency."""

    contestant: str
    latency_ms: float
    n: int
    delivered: int = 0
    duplicates: int = 0
    elapsed_s: float | None = None
    cpu_s: float | None = None
    cpu_split: list[float] = field(default_factory=list)  # per process, the main one first
    startup_cpu_s: float | None = None
    peak_rss_bytes: int = 0
    peak_rss_split: list[int] = field(default_factory=list)
    peak_pss_bytes: int = 0
    peak_processes: int = 0
    harness_cpu_s: float | None = None
    load_before: float | None = None
    servers_cpu_s: float | None = None
    redis_cpu_s: float | None = None  # the Redis server's, over the same window as cpu_s
    fetches: int = 0
    failed_fetches: int = 0
    rejected_posts: int = 0
    dead_letters: int = 0
    problems: list[str] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    log_path: str = ""
    pool: str = ""

    @property
    def rate(self) -> float | None:
        """Sessions (or tasks) per second over the measured window."""
        if not self.elapsed_s or not self.delivered:
            return None
        return self.delivered / self.elapsed_s

    @property
    def cpu_ms_per_item(self) -> float | None:
        """Worker CPU per session (or task), in milliseconds."""
        if self.cpu_s is None or not self.delivered:
            return None
        return 1000 * self.cpu_s / self.delivered

    @property
    def redis_cpu_ms_per_item(self) -> float | None:
        """Redis CPU per session (or task), in milliseconds."""
        if self.redis_cpu_s is None or not self.delivered:
            return None
        return 1000 * self.redis_cpu_s / self.delivered

    @property
    def peak_rss_mib(self) -> float:
        """Peak summed RSS of the worker's process tree, in MiB."""
        return self.peak_rss_bytes / 2**20

    @property
    def peak_pss_mib(self) -> float:
        """Peak summed PSS of the worker's process tree, in MiB (shared pages counted once)."""
        return self.peak_pss_bytes / 2**20


def analyse_deliveries(
    outcome: Outcome,
    ids: Collection[str],
    requests: Mapping[str, Sequence[tuple[float, int]]],
    attempts: Sequence[Mapping[str, Any]],
    window: tuple[float, float],
) -> None:
    """Fill ``outcome`` from the simulator's requests and the receiver's attempts.

    The clock runs from the first fetch the simulator saw to the last delivery the receiver
    accepted: both are ``time.monotonic()`` in other processes, comparable because Linux's
    CLOCK_MONOTONIC is one clock for the whole machine. ``window`` is the harness's own
    (worker started, analysis began), which every timestamp must fall inside.
    """
    wanted = set(ids)
    times = [t for sid, rows in requests.items() if sid in wanted for t, _ in rows]
    outcome.fetches = len(times)
    outcome.failed_fetches = sum(
        1 for sid, rows in requests.items() if sid in wanted for _, status in rows if status != 200
    )
    accepted = [a for a in attempts if 200 <= int(a["status"]) < 300]
    outcome.rejected_posts = len(attempts) - len(accepted)
    per_session = Counter(str(a["session_id"]) for a in accepted)
    outcome.delivered = len(wanted & per_session.keys())
    outcome.duplicates = sum(count - 1 for count in per_session.values())
    strangers = per_session.keys() - wanted
    if strangers:
        outcome.problems.append(f"{len(strangers)} unexpected session id(s) delivered")
    unverified = sum(1 for a in attempts if not a.get("verified", True))
    if unverified:
        outcome.problems.append(f"{unverified} POST(s) failed signature verification")
    if outcome.delivered < outcome.n:
        missing = sorted(wanted - per_session.keys(), key=_natural)
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        outcome.problems.append(
            f"SHORTFALL: {outcome.n - outcome.delivered} of {outcome.n} never delivered ({shown})"
        )
    if outcome.duplicates:
        outcome.problems.append(f"{outcome.duplicates} duplicate deliveries")
    if outcome.rejected_posts:
        outcome.problems.append(f"{outcome.rejected_posts} POST(s) answered non-2xx")
    if outcome.failed_fetches:
        outcome.problems.append(f"{outcome.failed_fetches} fetch(es) answered non-200")
    if not times or not accepted:
        return
    first, last = min(times), max(float(a["received_at"]) for a in accepted)
    if not (window[0] <= first <= last <= window[1]):
        outcome.problems.append(
            f"timestamps outside the run's window ({first:.3f}..{last:.3f} not in "
            f"{window[0]:.3f}..{window[1]:.3f}): are both servers on time.monotonic()?"
        )
    outcome.elapsed_s = last - first


def _natural(session_id: str) -> tuple[str, int]:
    head, _, number = session_id.rpartition("_")
    return (head, int(number)) if number.isdigit() else (session_id, 0)


class QueueWatch:
    """Polls a queue's length and kombu's unacked hash every ``interval_s`` in a thread.

    The no-op task must stay a no-op, so the clock is kept from outside: it starts at the first
    poll that finds fewer than ``n`` messages queued and stops at the first of two consecutive
    polls that find none queued and none unacknowledged (two, because a message popped by the
    worker sits in neither place for a moment before kombu records it as unacknowledged).
    """

    def __init__(self, client: redis.Redis, queue: str, n: int, interval_s: float = 0.01) -> None:
        self._client = client
        self._queue = queue
        self._n = n
        self._interval_s = interval_s
        self.first_drop: float | None = None
        self.drained: float | None = None
        self.remaining = n
        self.done = threading.Event()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-watch", daemon=True)

    def start(self) -> QueueWatch:
        """Start polling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling."""
        self._halt.set()
        self._thread.join(5)

    def _run(self) -> None:
        empty_since: float | None = None
        while not self._halt.is_set():
            now = time.monotonic()
            with self._client.pipeline(transaction=False) as pipe:
                pipe.llen(self._queue)
                pipe.hlen(KOMBU_UNACKED)
                queued, unacked = pipe.execute()
            self.remaining = int(queued) + int(unacked)
            if self.first_drop is None and queued < self._n:
                self.first_drop = now
            if self.first_drop is not None and self.remaining == 0:
                if empty_since is not None:
                    self.drained = empty_since
                    self.done.set()
                    return
                empty_since = now
            else:
                empty_since = None
            time.sleep(self._interval_s)


def log_problems(text: str) -> list[str]:
    """Lines at WARNING or above, tracebacks and errors, without Celery's run-as-root notice."""
    lines = []
    for line in text.splitlines():
        if _PROBLEM.search(line) and not any(marker in line for marker in _ROOT_WARNING):
            lines.append(line.rstrip())
    return lines


def pool_description(text: str) -> str:
    """The ``concurrency: 2 (prefork)`` of Celery's start-up banner, as ``prefork x2``."""
    match = re.search(r"concurrency:\s*(\d+)\s*\(([\w.]+)\)", text)
    return f"{match.group(2)} ×{match.group(1)}" if match else "?"
