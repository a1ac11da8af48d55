"""Send session ids to the workers, in batches, refusing bad ids before anything is sent."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from worker.errors import InvalidSessionId
from worker.ids import check_session_id
from worker.producer import Producer
from worker.work import Work


@dataclass
class EnqueueReport:
    """What an enqueue run did."""

    enqueued: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


def read_ids(arguments: Iterable[str], stdin: TextIO) -> Iterator[tuple[str, str]]:
    """(where, id) pairs from the arguments; ``-`` streams stdin one line at a time."""
    for position, argument in enumerate(arguments, start=1):
        if argument != "-":
            yield f"argument {position}", argument
            continue
        for number, line in enumerate(stdin, start=1):
            value = line.strip()
            if value:  # blank lines (a trailing newline, a spacer) are not ids
                yield f"stdin line {number}", value


def batches(
    entries: Iterable[tuple[str, str]], size: int, report: EnqueueReport, err: TextIO
) -> Iterator[list[Work]]:
    """Valid ids grouped ``size`` at a time; invalid ones reported on ``err`` as they come."""
    batch: list[Work] = []
    for where, value in entries:
        try:
            batch.append(Work(check_session_id(value)))
        except InvalidSessionId as exc:
            report.refused.append((where, str(exc)))
            print(f"refused {where}: {exc}", file=err)
            continue
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def enqueue(
    entries: Iterable[tuple[str, str]],
    producer: Producer,
    *,
    batch_size: int,
    source: str = "cli",
    err: TextIO = sys.stderr,
) -> EnqueueReport:
    """Enqueue (where, id) entries as ``enrich_batch`` messages over one broker connection.

    Each batch is recorded in the ledger as accepted from ``source`` before it is published.
    """
    report = EnqueueReport()
    with producer.session():
        for batch in batches(entries, batch_size, report, err):
            producer.send_fetches(batch, accept=source)
            report.enqueued += len(batch)
    return report


def enqueue_ids(
    ids: Iterable[str],
    producer: Producer,
    *,
    batch_size: int,
    label: str = "id",
    source: str = "cli",
    err: TextIO = sys.stderr,
) -> EnqueueReport:
    """Enqueue plain ids (no ``-`` convention): what other producers in this project use."""
    entries = ((f"{label} {n}", value) for n, value in enumerate(ids, start=1))
    return enqueue(entries, producer, batch_size=batch_size, source=source, err=err)
