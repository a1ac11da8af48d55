"""Backfill progress on stderr: a bar redrawn in place on a terminal, a plain line otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

BAR_WIDTH = 30


@dataclass
class Counts:
    """What a backfill did so far."""

    pages: int = 0
    listed: int = 0  # sessions read from the list
    enqueued: int = 0
    delivered: int = 0  # skipped: every sink already has them
    out_of_range: int = 0  # skipped: created outside --since/--until
    refused: int = 0  # ids that fail the session id rules

    def summary(self) -> str:
        """One line for the end of a run (and for the periodic lines)."""
        return (
            f"{self.pages} page(s), {self.listed} session(s) listed: {self.enqueued} enqueued, "
            f"{self.delivered} already delivered, {self.out_of_range} out of range, "
            f"{self.refused} refused"
        )


class Progress:
    """Shows ``Counts`` as they change; ``tty`` decides between a bar and periodic lines."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._interval_s = interval_s
        self._clock = clock
        self._last = clock()
        self._drawn = False

    def update(self, counts: Counts, total: int | None) -> None:
        """Called after every page."""
        if self._tty:
            self._stream.write("\r" + bar(counts, total) + "\x1b[K")
            self._stream.flush()
            self._drawn = True
        elif self._clock() - self._last >= self._interval_s:
            self._last = self._clock()
            print(f"backfill: {counts.summary()}", file=self._stream, flush=True)

    def message(self, text: str) -> None:
        """A line of its own, without breaking the bar."""
        self._end_bar()
        print(text, file=self._stream, flush=True)

    def finish(self, counts: Counts) -> None:
        """The final summary, always printed."""
        self._end_bar()
        print(f"backfill: {counts.summary()}", file=self._stream, flush=True)

    def _end_bar(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._drawn = False


def bar(counts: Counts, total: int | None) -> str:
    """``[#####-----] 120/480 listed | 100 enqueued | ...``; without a total, counts only."""
    if total:
        filled = min(BAR_WIDTH, BAR_WIDTH * counts.listed // total)
        head = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {counts.listed}/{total} listed"
    else:
        head = f"{counts.listed} listed"
    return (
        # ASCII only: stderr may not be UTF-8.
        f"{head} | {counts.enqueued} enqueued | {counts.delivered} already delivered | "
        f"page {counts.pages}"
    )
