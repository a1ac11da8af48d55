"""The backfill's parts without processes: paging, retries, positions, progress, arguments."""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import redis
from pydantic import SecretStr

from worker.cli.backfill.args import parse_date, positive
from worker.cli.backfill.pages import Page, PageFailed, RepeatingCursor, SessionPages
from worker.cli.backfill.progress import Counts, Progress, bar
from worker.cli.backfill.resume import Position, PositionStore, position_key
from worker.cli.backfill.run import Backfill, Filter, created_at
from worker.retry import RetryPolicy

# -- paging with retries (httpx.MockTransport) -----------------------------------------------


def pages_client(
    handler: Callable[[httpx.Request], httpx.Response], *, attempts: int = 4
) -> tuple[SessionPages, list[float], io.StringIO]:
    sleeps: list[float] = []
    err = io.StringIO()

    def report(line: str) -> None:
        print(line, file=err)

    pages = SessionPages(
        httpx.Client(transport=httpx.MockTransport(handler)),
        api_url="https://api.test/public/v1/",
        secret=SecretStr("secret_unit"),
        policy=RetryPolicy(base_s=0.01, max_s=5.0, max_attempts=attempts),
        report=report,
        sleep=sleeps.append,
    )
    return pages, sleeps, err


def page_body(ids: list[str], next_cursor: str | None = None, **pagination: Any) -> bytes:
    return orjson.dumps(
        {
            "data": [{"id": sid, "created_at": "2026-01-01T00:00:00Z"} for sid in ids],
            "pagination": {"has_more": next_cursor is not None, "next_cursor": next_cursor}
            | pagination,
        }
    )


def test_a_page_request_carries_the_filter_the_secret_and_a_small_limit() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=page_body(["ses_1"], "c2", total=9))

    pages, _, _ = pages_client(handler)
    page = pages.fetch("fun", "pro_1", "c1")

    assert page == Page([{"id": "ses_1", "created_at": "2026-01-01T00:00:00Z"}], "c2", 9)
    [request] = seen
    assert request.url.path == "/public/v1/sessions"
    assert dict(request.url.params) == {
        "filter[funnel_id]": "fun",
        "filter[profile_id]": "pro_1",
        "cursor": "c1",
        "limit": "50",
    }
    assert request.headers["Fox-Secret"] == "secret_unit"


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 524])
def test_transient_statuses_are_retried(status: int) -> None:
    answers = iter([httpx.Response(status), httpx.Response(200, content=page_body(["s"]))])
    pages, sleeps, err = pages_client(lambda _: next(answers))

    assert pages.fetch("fun", None, None).items == [
        {"id": "s", "created_at": "2026-01-01T00:00:00Z"}
    ]
    assert len(sleeps) == 1
    assert f"answered {status}" in err.getvalue()


def test_retry_after_is_honoured() -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "3"}),
            httpx.Response(200, content=page_body([])),
        ]
    )
    pages, sleeps, _ = pages_client(lambda _: next(answers))

    pages.fetch("fun", None, None)

    assert sleeps == [3.0]


def test_connection_faults_are_retried_until_the_attempts_run_out() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    pages, sleeps, _ = pages_client(handler, attempts=3)

    with pytest.raises(PageFailed, match="after 3 attempt"):
        pages.fetch("fun", None, None)
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(401, json={"message": "Unauthorized"}), "FUNNELFOX_SECRET"),
        (httpx.Response(400, json={"message": "bad filter"}), "400"),
        (httpx.Response(200, content=b"<html>"), "not JSON"),
        (httpx.Response(200, json={"items": []}), "'data'"),
        (httpx.Response(200, json={"data": [], "pagination": {"has_more": True}}), "next_cursor"),
    ],
)
def test_permanent_answers_stop_at_once(response: httpx.Response, message: str) -> None:
    pages, sleeps, _ = pages_client(lambda _: response)

    with pytest.raises(PageFailed, match=message):
        pages.fetch("fun", None, None)
    assert sleeps == []


# -- the run, with fakes for pages, the queue and the delivery records -------------------------


class FakeRedis:
    """Just enough of redis.Redis for PositionStore."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: bytes, ex: int | None = None) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def make_pages(n: int, size: int, *, repeat_at: int | None = None) -> dict[str | None, Page]:
    ids = [f"ses_{i:03d}" for i in range(n)]
    cursors: list[str | None] = [None] + [f"c{p}" for p in range(1, (n + size - 1) // size)]
    book = {}
    for number, cursor in enumerate(cursors):
        following = cursors[number + 1] if number + 1 < len(cursors) else None
        if repeat_at is not None and number == repeat_at:
            following = cursor
        items = [{"id": sid} for sid in ids[number * size : (number + 1) * size]]
        book[cursor] = Page(items, following, n)
    return book


class Run:
    """A Backfill over a fake catalog; records what it enqueued and fetched."""

    def __init__(
        self,
        book: dict[str | None, Page],
        store: PositionStore,
        delivered: frozenset[str] = frozenset(),
    ) -> None:
        self.book = book
        self.store = store
        self.delivered = delivered
        self.sent: list[list[str]] = []
        self.fetched: list[str | None] = []
        self.err = io.StringIO()
        self.out = io.StringIO()

    def backfill(self, **kwargs: Any) -> Backfill:
        def fetch(cursor: str | None) -> Page:
            self.fetched.append(cursor)
            return self.book[cursor]

        return Backfill(
            filter=kwargs.pop("filter", Filter("fun")),
            pages=fetch,
            enqueue=self.sent.append,
            undelivered=lambda ids: [sid not in self.delivered for sid in ids],
            store=self.store,
            progress=Progress(self.err, tty=False),
            out=self.out,
            **kwargs,
        )

    @property
    def ids(self) -> list[str]:
        return [sid for batch in self.sent for sid in batch]


@pytest.fixture
def store() -> PositionStore:
    return PositionStore(FakeRedis(), {"funnel_id": "fun"}, ttl_s=60)  # type: ignore[arg-type]


def test_every_page_is_enqueued_and_the_position_cleared(store: PositionStore) -> None:
    run = Run(make_pages(120, 50), store)

    assert run.backfill().run() == "done"
    assert run.ids == [f"ses_{i:03d}" for i in range(120)]
    assert [len(batch) for batch in run.sent] == [50, 50, 20]  # one call per page
    assert store.load() is None


def test_limit_in_the_middle_of_a_page_resumes_at_that_item(store: PositionStore) -> None:
    run = Run(make_pages(120, 50), store)

    assert run.backfill(limit=70).run() == "limit"
    assert run.ids == [f"ses_{i:03d}" for i in range(70)]
    assert store.load() == Position("c1", 20)

    rest = Run(run.book, store)
    assert rest.backfill().run() == "done"
    assert rest.fetched == ["c1", "c2"]
    assert rest.ids == [f"ses_{i:03d}" for i in range(70, 120)]
    assert "resuming from cursor 'c1', after 20 item(s)" in rest.err.getvalue()


def test_limit_counts_only_what_is_enqueued(store: PositionStore) -> None:
    delivered = frozenset(f"ses_{i:03d}" for i in range(0, 50, 2))
    run = Run(make_pages(100, 50), store, delivered)

    assert run.backfill(limit=30).run() == "limit"
    assert len(run.ids) == 30
    assert not delivered & set(run.ids)


def test_a_repeating_cursor_raises_with_the_page_saved(store: PositionStore) -> None:
    run = Run(make_pages(200, 50, repeat_at=1), store)

    with pytest.raises(RepeatingCursor, match="'c1'"):
        run.backfill().run()
    assert run.ids == [f"ses_{i:03d}" for i in range(100)]
    assert store.load() == Position("c1", 50)


def test_dry_run_prints_and_saves_nothing(store: PositionStore) -> None:
    run = Run(make_pages(60, 50), store)

    assert run.backfill(dry_run=True, limit=55).run() == "limit"
    assert run.sent == []
    assert run.out.getvalue().split() == [f"ses_{i:03d}" for i in range(55)]
    assert store.load() is None


def test_restart_starts_from_page_one(store: PositionStore) -> None:
    store.save(Position("c1", 10))
    run = Run(make_pages(60, 50), store)

    assert run.backfill().run(restart=True) == "done"
    assert run.fetched == [None, "c1"]
    assert len(run.ids) == 60


def test_bad_ids_and_dates_are_counted_not_enqueued(store: PositionStore) -> None:
    items = [
        {"id": "ses_ok", "created_at": "2026-01-10T00:00:00Z"},
        {"id": "../x", "created_at": "2026-01-10T00:00:00Z"},
        {"id": "-", "created_at": "2026-01-10T00:00:00Z"},
        {"id": "ses_old", "created_at": "2025-12-01T00:00:00Z"},
        {"id": "ses_undated"},
    ]
    run = Run({None: Page(items, None)}, store)
    backfill = run.backfill(filter=Filter("fun", since=datetime(2026, 1, 1, tzinfo=UTC)))

    assert backfill.run() == "done"
    # "-" matches the id rules; only the CLI reads it as "stdin", and backfill never does.
    assert run.ids == ["ses_ok", "-"]
    counts = backfill.counts
    assert (counts.refused, counts.out_of_range, counts.listed) == (1, 2, 5)


# -- small parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T04:04:05+01:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (1767322800, datetime(2026, 1, 2, 3, 0, tzinfo=UTC)),
        ("yesterday", None),
        (True, None),
        (None, None),
    ],
)
def test_created_at(value: object, expected: datetime | None) -> None:
    assert created_at({"created_at": value}) == expected


def test_parse_date() -> None:
    assert parse_date("2026-01-02") == datetime(2026, 1, 2, tzinfo=UTC)
    assert parse_date("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_date("2026-01-02T03:04") == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_date("01/02/2026")
    with pytest.raises(argparse.ArgumentTypeError):
        positive("0")


def test_the_position_key_depends_on_the_filter_only() -> None:
    a = Filter("fun", since=datetime(2026, 1, 1, tzinfo=UTC)).identity("https://x")
    b = Filter("fun", since=datetime(2026, 1, 1, tzinfo=UTC)).identity("https://x")
    c = Filter("fun", profile_id="pro").identity("https://x")
    assert position_key(a) == position_key(b) != position_key(c)
    assert position_key(a).startswith("ffe:backfill:")


def test_positions_round_trip_in_redis(redis_client: redis.Redis) -> None:
    store = PositionStore(redis_client, {"funnel_id": "fun"}, ttl_s=60)

    store.save(Position("abc", 7))
    assert store.load() == Position("abc", 7)
    assert 0 < redis_client.ttl(store.key) <= 60
    store.clear()
    assert store.load() is None
    redis_client.set(store.key, b"not json")
    assert store.load() is None


def test_progress_on_a_terminal_is_a_bar() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=True)
    progress.update(Counts(pages=2, listed=100, enqueued=90, delivered=10), total=400)
    progress.finish(Counts(pages=2, listed=100, enqueued=90, delivered=10))

    text = stream.getvalue()
    assert text.startswith("\r[#######-----------------------] 100/400 listed")
    assert text.endswith("90 enqueued, 10 already delivered, 0 out of range, 0 refused\n")
    assert bar(Counts(listed=5), None).startswith("5 listed")


def test_progress_elsewhere_is_a_periodic_line() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, tty=False, interval_s=10, clock=lambda: now[0])
    for second in range(0, 35, 5):
        now[0] = float(second)
        progress.update(Counts(pages=second), total=None)

    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "backfill: 10 page(s)",
        "backfill: 20 page(s)",
        "backfill: 30 page(s)",
    ]
    assert "\r" not in stream.getvalue()
