"""``python -m bench.loadgen``: FunnelFox webhook events POSTed to ``web`` at a fixed rate.

Open loop: event i is due at ``start + i / rate`` whatever happened to the ones before, so a
slow ingress cannot slow the generator down and hide its own slowness. Each event is posted
from a timer callback over keep-alive connections (``bench.rawhttp``): no task per request.
The generator measures itself: its lag (when it posted each event against when it was due)
and its CPU, so a step it could not drive is reported as such rather than blamed on the system.
An event's POST time is when the generator posted it; waiting for a free connection (all busy
with slow answers) counts against the system, as it would for FunnelFox.

While it sends, it asks the receiver every ``--check-every-s`` how many sessions were delivered.
Every event posted more than ``--late-after-s`` ago and not delivered yet will have a
POST → delivered time above that bound; once they exceed ``--late-share`` of the events the
step plans, its percentile at ``1 - late-share`` is certain to be above the bound too, and
the step stops (after ``--min-run-s``) instead of piling up a backlog for minutes.

Times are ``time.monotonic()``: CLOCK_MONOTONIC, one clock for every process on the machine,
the same one the receiver stamps each delivery with. Writes one JSON document to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.rawhttp import Origin, Pool, request_bytes
from workshop.server import new_event_loop

EVENT_TYPE = "onboarding.completed"
WEBHOOK_PATH = "/webhooks/funnelfox"
# Events still unanswered this long after the last one was posted count as refused
# (FunnelFox would time out and retry them).
ANSWER_GRACE_S = 10.0
# The generator stands for FunnelFox, another machine: on this one it should not queue for a
# core behind the processes it measures, or its lag is theirs. Needs CAP_SYS_NICE (root).
NICENESS = -10
WARM_CONNECTIONS = 16


@dataclass
class Sent:
    """One event: when it was due, when it was posted, when and how ``web`` answered."""

    session_id: str
    due: float
    posted: float
    answered: float = 0.0
    status: int = 0  # 0: no answer (connection failed or closed, or given up on)


@dataclass
class Report:
    """What the generator writes to ``--out``."""

    rate: float
    planned: int
    started: float = 0.0
    ended: float = 0.0
    stop_reason: str = ""
    cpu_s: float = 0.0  # while sending and waiting for the answers
    startup_cpu_s: float = 0.0
    scheduling: str = ""
    max_in_flight: int = 0
    connections_opened: int = 0
    failed_connects: int = 0
    events: list[Sent] = field(default_factory=list)


def event_body(prefix: str, i: int, session_id: str) -> bytes:
    """A FunnelFox ``onboarding.completed`` event with its own event id and session id."""
    return orjson.dumps(
        {
            "id": f"evt_{prefix}_{i:06d}",
            "type": EVENT_TYPE,
            "session_id": session_id,
            "created_at": int(time.time()),
            "is_sandbox": False,
            "project_id": "prj_bench",
            "funnel_id": "fnl_bench",
            "profile_id": f"pro_{prefix}_{i:06d}",
        }
    )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Generator:
    """Posts the planned events on time and watches the receiver while it does."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.planned = max(1, round(args.rate * args.duration_s))
        self.report = Report(rate=args.rate, planned=self.planned)
        self.web = Pool(Origin(args.web), args.connections)
        self.receiver = Pool(Origin(args.receiver), 1)
        self._headers = {"Fox-Secret-Key": args.secret, "Content-Type": "application/json"}
        self._next = 0
        self._in_flight = 0
        self._sending = asyncio.Event()  # set when the last event was posted, or on a stop
        self._answered = asyncio.Event()  # set when nothing is in flight after that
        self._stopped = False

    async def run(self) -> Report:
        """Post, watch, wait for the answers; the report."""
        await self.web.warm(WARM_CONNECTIONS)
        self.report.startup_cpu_s = _cpu_s()
        loop = asyncio.get_running_loop()
        self.report.started = time.monotonic() + 0.05
        loop.call_later(0.05, self._tick)
        watcher = loop.create_task(self._watch())
        await self._sending.wait()
        self.report.ended = time.monotonic()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if self._in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), ANSWER_GRACE_S)
        self.report.cpu_s = _cpu_s() - self.report.startup_cpu_s
        self.report.connections_opened = self.web.opened
        self.report.failed_connects = self.web.failed_connects
        self.web.close()
        self.receiver.close()
        return self.report

    def _tick(self) -> None:
        """Post every event that is due, then sleep until the next one is."""
        try:
            self._post_due()
        except Exception as exc:  # a bug here must end the step, not hang it
            self._stop(f"the generator failed: {type(exc).__name__}: {exc}")
            raise

    def _post_due(self) -> None:
        rate, start, prefix = self.args.rate, self.report.started, self.args.prefix
        now = time.monotonic()
        while not self._stopped and self._next < self.planned:
            due = start + self._next / rate
            if due > now:
                asyncio.get_running_loop().call_later(due - time.monotonic(), self._tick)
                return
            self._post(self._next, due, prefix)
            self._next += 1
        self._sending.set()

    def _post(self, i: int, due: float, prefix: str) -> None:
        session_id = f"{prefix}_{i:06d}"
        body = event_body(prefix, i, session_id)
        data = request_bytes("POST", self.web.origin, WEBHOOK_PATH, self._headers, body)
        record = Sent(session_id, due, time.monotonic())
        self.report.events.append(record)
        self._in_flight += 1
        self.report.max_in_flight = max(self.report.max_in_flight, self._in_flight)

        def done(status: int, _: bytes) -> None:
            record.answered = time.monotonic()
            record.status = status
            self._in_flight -= 1
            if not self._in_flight and self._sending.is_set():
                self._answered.set()

        self.web.send(data, done)

    async def _delivered(self) -> int | None:
        path = f"/_recv/wait?count={10**9}&timeout=0&distinct=1"
        status, body = await self.receiver.fetch(
            request_bytes("GET", self.receiver.origin, path, {})
        )
        if status != 200:
            return None
        return int(orjson.loads(body)["count"])

    async def _watch(self) -> None:
        """Stop the step once its tail is sure to be over the bound, or the generator lags."""
        args = self.args
        late_limit = args.late_share * self.planned
        counted = 0  # events posted before the cut-off, counted once
        while True:
            await asyncio.sleep(args.check_every_s)
            delivered = await self._delivered()
            now = time.monotonic()
            events = self.report.events
            while counted < len(events) and events[counted].posted <= now - args.late_after_s:
                counted += 1
            if delivered is None or now - self.report.started < args.min_run_s:
                continue
            late = counted - delivered
            if late > late_limit:
                self._stop(
                    f"not sustained: {late} events posted over {args.late_after_s:g} s ago "
                    f"still undelivered (> {args.late_share:.0%} of {self.planned})"
                )
                return
            behind = now - (self.report.started + self._next / args.rate)
            if behind > args.max_lag_s:
                self._stop(f"the generator fell {behind:.2f} s behind its schedule")
                return

    def _stop(self, reason: str) -> None:
        self.report.stop_reason = reason
        self._stopped = True
        self._sending.set()


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--web", required=True, help="web's origin (http://host:port)")
    parser.add_argument("--secret", required=True, help="sent as Fox-Secret-Key")
    parser.add_argument("--receiver", required=True, help="the receiver's origin")
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--prefix", required=True, help="session ids are PREFIX_000000 …")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--connections", type=int, default=512, help="to web, at most")
    parser.add_argument("--late-after-s", type=float, default=1.0)
    parser.add_argument("--late-share", type=float, default=0.01)
    parser.add_argument("--min-run-s", type=float, default=5.0)
    parser.add_argument("--max-lag-s", type=float, default=1.0)
    parser.add_argument("--check-every-s", type=float, default=0.25)
    parser.add_argument(
        "--scheduling", choices=("fifo", "nice"), default="fifo", help="asked for, if allowed"
    )
    parser.add_argument("--niceness", type=int, default=NICENESS, help="without fifo")
    return parser


def raise_priority(policy: str, niceness: int) -> str:
    """Ask the scheduler to favour this process; how it is scheduled, as a few words.

    ``fifo``: the lowest real-time priority, so a timer that fires finds a core at once
    instead of queueing behind the processes measured. The generator sleeps between
    events (about 15 % of a core at 1,000 events/s), and the kernel caps real-time tasks
    at sched_rt_runtime_us anyway. Falls back to ``niceness``, then to nothing.
    """
    if policy == "fifo":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            return "SCHED_FIFO 1"
        except (OSError, AttributeError):
            pass
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    return f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one step and write its report."""
    args = build_parser().parse_args(argv)
    scheduling = raise_priority(args.scheduling, args.niceness)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        report = runner.run(Generator(args).run())
    report.scheduling = scheduling
    document: dict[str, Any] = asdict(report)
    args.out.write_bytes(orjson.dumps(document))
    print(
        f"loadgen: {len(report.events)}/{report.planned} events at {args.rate:g}/s; "
        f"{report.stop_reason or 'ran to the end'}; CPU {report.cpu_s:.2f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
