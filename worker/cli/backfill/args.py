"""The ``backfill`` sub-command's arguments; kept apart so ``python -m worker`` starts quickly."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``python -m worker backfill``."""
    parser.add_argument("--funnel-id", required=True, help="the funnel whose sessions to enqueue")
    parser.add_argument("--profile-id", help="only this profile's sessions")
    parser.add_argument(
        "--since", type=parse_date, help="only sessions created at or after (YYYY-MM-DD or ISO)"
    )
    parser.add_argument(
        "--until", type=parse_date, help="only sessions created before (YYYY-MM-DD or ISO)"
    )
    parser.add_argument(
        "--limit", type=positive, help="enqueue at most N sessions (a rerun continues)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the ids that would be enqueued (stdout); enqueue and save nothing",
    )
    parser.add_argument(
        "--restart", action="store_true", help="ignore a saved position and start from page 1"
    )


def parse_date(text: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 time (UTC when it names no offset)."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected YYYY-MM-DD or an ISO 8601 time, got {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def positive(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
