"""``python -m worker backfill``: enqueue a funnel's past sessions, read from ``GET /sessions``.

For sessions that finished before the worker existed or while it was down. Pages are read one
at a time (worker.cli.backfill.pages), sessions every sink already has are skipped, the rest are
sent as ``enrich_batch`` messages (worker.cli.enqueue), and the position is saved after each page
(worker.cli.backfill.resume), so a run that stops, for any reason, is resumed by running it again.
After an interruption in the middle of a page, at most that page is enqueued a second time;
the delivery records keep its sessions from being delivered twice.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TextIO

from worker.cli.backfill.pages import Page, RepeatingCursor
from worker.cli.backfill.progress import Counts, Progress
from worker.cli.backfill.resume import Position, PositionStore
from worker.errors import InvalidSessionId
from worker.ids import check_session_id

if TYPE_CHECKING:
    from config import Settings

Outcome = Literal["done", "limit"]

# Exit statuses: 0 finished (or stopped at --limit), 1 stopped on an error or refused ids,
# 2 a configuration problem, 130 interrupted. Progress is saved in every case.
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Filter:
    """Which sessions a backfill covers; its arguments also name its saved position."""

    funnel_id: str
    profile_id: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def identity(self, api_url: str) -> dict[str, Any]:
        """What makes two runs the same backfill (--limit and --dry-run do not)."""
        return {
            "api_url": api_url,
            "funnel_id": self.funnel_id,
            "profile_id": self.profile_id,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }

    def in_range(self, item: dict[str, Any]) -> bool:
        """Whether a listed session was created inside --since/--until (always, if unset)."""
        if self.since is None and self.until is None:
            return True
        created = created_at(item)
        if created is None:
            return False
        if self.since is not None and created < self.since:
            return False
        return self.until is None or created < self.until


def created_at(item: dict[str, Any]) -> datetime | None:
    """A listed session's creation time: RFC 3339 in the list (Unix seconds tolerated)."""
    value = item.get("created_at")
    try:
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


@dataclass
class Backfill:
    """One run: where pages come from, where ids go, and what to remember."""

    filter: Filter
    pages: Callable[[str | None], Page]
    enqueue: Callable[[list[str]], None]
    undelivered: Callable[[list[str]], list[bool]]
    store: PositionStore
    progress: Progress
    out: TextIO
    limit: int | None = None
    dry_run: bool = False
    counts: Counts = field(default_factory=Counts)
    # Wraps enqueueing a page and saving the position, so Ctrl-C never splits the two.
    shield: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext

    def run(self, *, restart: bool = False) -> Outcome:
        """Page until the end, --limit, or an error (BackfillError; the position is saved)."""
        position = self._start(restart)
        cursor, skip = position.cursor, position.done
        seen: set[str] = set()
        while True:
            if cursor is not None:
                seen.add(cursor)
            page = self.pages(cursor)
            self.counts.pages += 1
            with self.shield():
                outcome = self._finish_page(page, cursor, skip, seen)
            self.progress.update(self.counts, page.total)
            if outcome is not None:
                return outcome
            cursor, skip = page.next_cursor, 0

    def _finish_page(
        self, page: Page, cursor: str | None, skip: int, seen: set[str]
    ) -> Outcome | None:
        """Enqueue a page's sessions and save what follows; an outcome when the run ends."""
        stop_at = self._take(page.items, skip)
        if stop_at is not None:
            self._save(Position(cursor, stop_at))
            return "limit"
        following = page.next_cursor
        if following is None:
            if not self.dry_run:
                self.store.clear()
            return "done"
        if following in seen:
            # The page itself is done; a rerun starts after it and meets the same cursor.
            self._save(Position(cursor, len(page.items)))
            raise RepeatingCursor(
                f"FunnelFox gave next_cursor {following!r} again (page {self.counts.pages} "
                "of this run); stopped instead of looping"
            )
        self._save(Position(following, 0))
        if self.limit is not None and self.counts.enqueued >= self.limit:
            return "limit"
        return None

    def _start(self, restart: bool) -> Position:
        if restart:
            if not self.dry_run:
                self.store.clear()
            return Position(None)
        saved = self.store.load()
        if saved is None:
            return Position(None)
        where = "the first page" if saved.cursor is None else f"cursor {saved.cursor!r}"
        self.progress.message(
            f"backfill: resuming from {where}, after {saved.done} item(s) of that page "
            "(--restart starts over)"
        )
        return saved

    def _take(self, items: list[dict[str, Any]], skip: int) -> int | None:
        """Handle ``items[skip:]``; the index to resume from if --limit cut the page short."""
        decisions: list[tuple[int, str, str]] = []  # (index, what, session id)
        candidates: list[tuple[int, str]] = []
        for index in range(skip, len(items)):
            item = items[index]
            if not self.filter.in_range(item):
                decisions.append((index, "out_of_range", ""))
                continue
            try:
                session_id = _session_id(item)
            except InvalidSessionId as exc:
                self.progress.message(f"backfill: refused a listed session: {exc}")
                decisions.append((index, "refused", ""))
                continue
            candidates.append((index, session_id))
        pending = self.undelivered([sid for _, sid in candidates]) if candidates else []
        for (index, session_id), wanted in zip(candidates, pending, strict=True):
            decisions.append((index, "enqueue" if wanted else "delivered", session_id))
        decisions.sort()

        stop_at: int | None = None
        if self.limit is not None:
            room = max(0, self.limit - self.counts.enqueued)
            chosen = [d for d in decisions if d[1] == "enqueue"]
            if len(chosen) > room:
                stop_at = chosen[room][0]
                decisions = [d for d in decisions if d[0] < stop_at]

        ids = [sid for _, what, sid in decisions if what == "enqueue"]
        if ids:
            if self.dry_run:
                for session_id in ids:
                    print(session_id, file=self.out)
            else:
                self.enqueue(ids)
        counts = self.counts
        counts.listed += len(decisions)
        counts.enqueued += len(ids)
        counts.delivered += sum(1 for d in decisions if d[1] == "delivered")
        counts.out_of_range += sum(1 for d in decisions if d[1] == "out_of_range")
        counts.refused += sum(1 for d in decisions if d[1] == "refused")
        return stop_at

    def _save(self, position: Position) -> None:
        if not self.dry_run:
            self.store.save(position)


def _session_id(item: dict[str, Any]) -> str:
    return check_session_id(item.get("id"))


# -- the command (arguments in worker.cli.backfill.args) ------------------------------------------


def main(
    settings: Settings,
    args: argparse.Namespace,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Run a backfill from parsed arguments against the configured FunnelFox and Redis."""
    if args.since and args.until and args.since >= args.until:
        print("backfill: --since must be before --until", file=err)
        return EXIT_CONFIG
    if settings.funnelfox.secret is None or not settings.funnelfox.secret.get_secret_value():
        print("backfill: FUNNELFOX_SECRET is required to list sessions", file=err)
        return EXIT_CONFIG
    filter_ = Filter(args.funnel_id, args.profile_id, args.since, args.until)
    return _run(settings, filter_, args, out, err)


def _run(
    settings: Settings, filter_: Filter, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    import asyncio

    from worker.cli.backfill.pages import BackfillError, SessionPages, make_sync_client
    from worker.cli.enqueue import enqueue_ids
    from worker.cli.replicated import ReplicaCheck
    from worker.fleet import registered_sinks
    from worker.producer import Producer
    from worker.redis_clients import async_client, sync_client
    from worker.retry import RetryPolicy
    from worker.state import DeliveryState

    assert settings.funnelfox.secret is not None
    policy = RetryPolicy(
        base_s=settings.retry.backoff_base_s,
        max_s=settings.retry.backoff_max_s,
        max_attempts=settings.retry.max_attempts,
    )
    progress = Progress(err)
    sync_redis = sync_client(settings.redis_url)
    sinks = registered_sinks(sync_redis)
    store = PositionStore(
        sync_redis, filter_.identity(settings.funnelfox.api_url), ttl_s=settings.dedupe_ttl_s
    )

    check = ReplicaCheck(settings)
    producer = Producer.connect(settings.redis_url)

    def send(ids: list[str]) -> None:
        enqueue_ids(
            ids,
            producer,
            batch_size=settings.worker_batch_size,
            label="listed id",
            source="backfill",
            err=err,
        )

    with (
        asyncio.Runner() as loop,
        make_sync_client(settings.funnelfox.timeout_s) as http,
    ):
        async_redis = async_client(settings.redis_url, max_connections=2)
        state = DeliveryState(async_redis, dedupe_ttl_s=settings.dedupe_ttl_s, claim_ttl_s=1)
        pages = SessionPages(
            http,
            api_url=settings.funnelfox.api_url,
            secret=settings.funnelfox.secret,
            policy=policy,
            report=progress.message,
        )

        def undelivered(ids: list[str]) -> list[bool]:
            if not sinks:  # no worker has registered a destination yet: nothing delivered
                return [True] * len(ids)
            return [bool(left) for left in loop.run(state.pending_sinks(ids, sinks))]

        backfill = Backfill(
            filter=filter_,
            pages=lambda cursor: pages.fetch(filter_.funnel_id, filter_.profile_id, cursor),
            enqueue=send,
            undelivered=undelivered,
            store=store,
            progress=progress,
            out=out,
            limit=args.limit,
            dry_run=args.dry_run,
            shield=defer_interrupts,
        )
        try:
            outcome = backfill.run(restart=args.restart)
        except BackfillError as exc:
            progress.finish(backfill.counts)
            print(f"backfill: stopped: {exc}", file=err)
            print("backfill: progress is saved; run the same command again to resume", file=err)
            return EXIT_ERROR
        except KeyboardInterrupt:
            progress.finish(backfill.counts)
            print("backfill: interrupted; run the same command again to resume", file=err)
            return EXIT_INTERRUPTED
        finally:
            loop.run(async_redis.aclose())
            sync_redis.close()
            producer.close()
    progress.finish(backfill.counts)
    if outcome == "limit":
        print(f"backfill: stopped at --limit {args.limit}; run again to continue", file=err)
    elif not args.dry_run:
        print("backfill: finished", file=err)
    if not args.dry_run and not check.confirm(err):
        return EXIT_ERROR
    return EXIT_ERROR if backfill.counts.refused else 0


@contextlib.contextmanager
def defer_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on them as usual."""
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            raise KeyboardInterrupt
