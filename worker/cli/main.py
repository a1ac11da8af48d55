"""``python -m worker``: enqueue session ids, manage dead letters, backfill past sessions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from worker.cli.replicated import ReplicaCheck

# A configuration problem (a variable missing or wrong, Redis not answering).
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The command line, one sub-command per job."""
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    enqueue = commands.add_parser("enqueue", help="enqueue session ids for enrichment")
    enqueue.add_argument(
        "ids", nargs="+", metavar="ID", help="session ids; '-' reads them from stdin, one a line"
    )

    dlq = commands.add_parser("dlq", help="list, replay or purge dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_commands.add_parser("list", help="every dead letter, one JSON object a line")
    listing.add_argument("--reason", help="only dead letters with this reason code")
    replay = dlq_commands.add_parser(
        "replay",
        help="re-run the failed stage and drop the record once re-enqueued (no ids: all); "
        "an id without a dead letter is delivered again in full",
    )
    replay.add_argument("ids", nargs="*", metavar="ID")
    purge = dlq_commands.add_parser("purge", help="delete dead letters (no ids: all)")
    purge.add_argument("ids", nargs="*", metavar="ID")

    status = commands.add_parser(
        "status",
        help="where sessions are: one JSON object a line (no ids: counts per state)",
    )
    status.add_argument("ids", nargs="*", metavar="ID")

    destinations = commands.add_parser(
        "destinations",
        help="list the fleet's destinations (one JSON object a line); pause or resume one",
    )
    actions = destinations.add_subparsers(dest="destinations_command")
    for action, text in (
        ("pause", "hold its deliveries (they wait, retries untouched) until resume"),
        ("resume", "deliver to it again"),
    ):
        actions.add_parser(action, help=text).add_argument("name", metavar="NAME")

    from worker.cli.backfill.args import add_arguments as add_backfill_arguments

    add_backfill_arguments(
        commands.add_parser("backfill", help="enqueue a funnel's past sessions from FunnelFox")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status is non-zero if anything was refused."""
    args = build_parser().parse_args(argv)
    try:
        settings = _settings()
    except ConfigError as exc:
        print(f"funnelfox-enricher: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "enqueue":
        return _enqueue(settings, args.ids)
    if args.command == "dlq":
        return _dlq(settings, args)
    if args.command == "destinations":
        from worker.cli.destinations import main as destinations

        return destinations(settings, args.destinations_command, getattr(args, "name", None))
    if args.command == "status":
        from worker.cli.status import main as status

        return status(settings, args.ids)
    if args.command == "backfill":
        from worker.cli.backfill.run import main as backfill

        return backfill(settings, args)
    raise AssertionError(args.command)  # argparse only lets known commands through


def _settings() -> Settings:
    """The settings a console command needs (no sink: it delivers nothing), Redis checked."""
    from worker.redis_clients import require_reachable

    settings = load_settings(require_sink=False)
    require_reachable(settings.redis_url)
    return settings


def _enqueue(settings: Settings, ids: list[str]) -> int:
    from worker.cli.enqueue import enqueue, read_ids
    from worker.producer import Producer

    check = _replica_check(settings)
    producer = Producer.connect(settings.redis_url)
    try:
        report = enqueue(read_ids(ids, sys.stdin), producer, batch_size=settings.worker_batch_size)
    finally:
        producer.close()
    refused = len(report.refused)
    print(f"enqueued {report.enqueued} session id(s), refused {refused}", file=sys.stderr)
    return 1 if not check.confirm(sys.stderr) or refused else 0


def _replica_check(settings: Settings) -> ReplicaCheck:
    from worker.cli.replicated import ReplicaCheck

    return ReplicaCheck(settings)


def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from worker.cli import dlq as replay

    if args.dlq_command == "list":
        for letter in replay.list_letters(settings.redis_url, args.reason):
            print(letter.to_json().decode())
        return 0
    if args.dlq_command == "purge":
        removed = replay.purge(settings.redis_url, args.ids)
        print(f"purged {removed} dead letter(s)", file=sys.stderr)
        return 0
    from worker.producer import Producer

    check = _replica_check(settings)
    producer = Producer.connect(settings.redis_url)
    try:
        plan = replay.replay(
            settings.redis_url, args.ids, producer, batch_size=settings.worker_batch_size
        )
    finally:
        producer.close()
    for session_id in plan.redelivered:
        print(f"{session_id}: no dead letter; delivering it again in full", file=sys.stderr)
    for event_id in plan.not_replayable:
        print(
            f"{event_id}: a conversion without a dead letter; its event is not kept, "
            "so it cannot be delivered again",
            file=sys.stderr,
        )
    print(
        f"replayed {len(plan.letters)} dead letter(s): {len(plan.fetches)} fetch(es), "
        f"{sum(len(w) for w in plan.deliveries.values())} deliver(ies)",
        file=sys.stderr,
    )
    replicated = check.confirm(sys.stderr)
    return 0 if replicated and not plan.not_replayable else 1
