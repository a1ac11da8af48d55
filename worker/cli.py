"""``python -m worker``: enqueue session ids (and, later, manage dead letters and backfills)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The command line, one sub-command per job."""
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    enqueue = commands.add_parser("enqueue", help="enqueue session ids for enrichment")
    enqueue.add_argument(
        "ids", nargs="+", metavar="ID", help="session ids; '-' reads them from stdin, one a line"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status is non-zero if anything was refused."""
    args = build_parser().parse_args(argv)
    if args.command == "enqueue":
        return _enqueue(args.ids)
    raise AssertionError(args.command)  # argparse only lets known commands through


def _enqueue(ids: list[str]) -> int:
    from worker.app import settings
    from worker.enqueue import enqueue

    report = enqueue(ids, batch_size=settings.worker_batch_size)
    refused = len(report.refused)
    print(f"enqueued {report.enqueued} session id(s), refused {refused}", file=sys.stderr)
    return 1 if refused else 0
