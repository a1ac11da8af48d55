"""Chaos and network faults with the whole fleet running: ``make chaos`` repeats them, the tests
run each once.

- **chaos**: two workers consume while, at random moments, a worker is SIGKILLed (and another
  started) or Redis is SIGKILLed and restarted on its AOF; ids keep being enqueued meanwhile.
  Consuming is never paused, so a kill may land between kombu's BRPOP and its record of the
  message as unacknowledged, which loses the message: the ledger's reconciler must publish
  such sessions again.
- **netfault**: the workers and the web ingress reach Redis through workshop.faultproxy, which
  cuts connections at random, mid-request and mid-reply, hundreds of times. Sessions arrive as
  FunnelFox events POSTed to the ingress, sent again as FunnelFox would (503, 409, a dropped
  connection) until answered 202 or 200.

Both end on one finish line: every accepted id is delivered to each destination under one
webhook-id (and is in the stream), or dead-lettered with its reason; the ledger holds nothing
unfinished. Repeats are counted, not failed: a webhook receipt repeated (same webhook-id) and a
stream entry repeated.

    python -m tests.chaos [--chaos N] [--netfault M] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.processes import (
    ROOT,
    Process,
    dead_letters,
    fleet_env,
    spawn_worker,
    start_web,
    wait_until,
)
from worker.cli.enqueue import enqueue_ids
from worker.keys import (
    DUE,
    FETCH_QUEUE,
    KOMBU_UNACKED,
    LEDGER_OPEN,
    METRICS,
    delivery_queue,
    ledger_key,
)
from worker.producer import Producer
from workshop.faultproxy import Cuts, FaultProxy
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import DEMO_WEBHOOK_SECRET, WebhookReceiver
from workshop.redis_server import EmbeddedRedis

STREAM = "test:enriched"
DESTINATIONS = ("webhook", "stream")
QUEUES = (FETCH_QUEUE, *(delivery_queue(name) for name in DESTINATIONS))
BATCH_SIZE = 5
# Seconds standing in for production's minutes. RECONCILE_AFTER_S must exceed the task time
# limit (the worker refuses to start otherwise): a lost message is published again within
# seconds, and a dead worker's messages come back after the visibility timeout. The limit is
# 5 s, not less: a new pool process imports the pipeline in its first task, which takes 3 to
# 6 s on this loaded machine, and a process killed at the limit is replaced by another that
# imports again.
TIMINGS = {
    "VISIBILITY_TIMEOUT_S": "6",
    "TASK_TIME_LIMIT_S": "5",
    "RECONCILE_AFTER_S": "6",
    "FUNNELFOX_TIMEOUT_S": "1",
    "WEBHOOK_TIMEOUT_S": "1",
    "RETRY_BACKOFF_BASE_S": "0.05",
    "RETRY_BACKOFF_MAX_S": "1.5",
    "RETRY_MAX_ATTEMPTS": "5",
    "WORKER_BATCH_SIZE": str(BATCH_SIZE),
}
WEBHOOK_PATH = "/webhooks/funnelfox"
SECRETS = (DEMO_WEBHOOK_SECRET, DEMO_WEBHOOK_SECRET.removeprefix("whsec_"))


@dataclass(frozen=True)
class Catalogue:
    """The sessions of a run and how each must end."""

    delivered: tuple[str, ...]  # to every destination
    dead: dict[str, tuple[str, str]]  # id → (stage, reason) of its dead letter

    @property
    def ids(self) -> list[str]:
        """Every id, delivered ones first."""
        return [*self.delivered, *self.dead]

    def expected(self, session_id: str, destination: str) -> bool:
        """Whether ``destination`` must get ``session_id``: all but those that died before it
        (fetch, validate) or at it."""
        stage = self.dead.get(session_id, ("",))[0]
        return stage not in ("fetch", "validate", f"deliver:{destination}")


CHAOS = Catalogue(
    delivered=(
        *(f"ses_cplain{i:03d}" for i in range(200)),
        *(f"ses_c{code}-s{code}x2" for code in (408, 425, 429, 500, 502, 503, 504, 524)),
        *("ses_cdrop-dropx1", "ses_cslow-slow3000x1", "ses_cra-s429x1-ra1", "ses_cauth-s401x2"),
        *("ses_ch500-h500x2", "ses_chdrop-hdropx1", "ses_ch429-h429x1-hra1"),
        *("ses_canon-anon", "ses_cextra-extra", "ses_cbare-bare", "ses_cobj-objreply"),
    ),
    dead={
        "ses_c400-s400": ("fetch", "rejected"),
        "ses_c404-s404": ("fetch", "not_found"),
        "ses_c422-s422": ("fetch", "rejected"),
        "ses_cnotjson-notjson": ("validate", "invalid_payload"),
        "ses_cinvalid-invalid": ("validate", "invalid_payload"),
        "ses_cexhaust-s503": ("fetch", "retries_exhausted"),
        "ses_clocked-s403": ("fetch", "unauthorized"),
        "ses_ch410-h410": ("deliver:webhook", "gone"),
        "ses_ch404-h404": ("deliver:webhook", "rejected"),
        "ses_ch302-h302": ("deliver:webhook", "rejected"),
        "ses_chexhaust-h503": ("deliver:webhook", "retries_exhausted"),
    },
)

NETFAULT = Catalogue(
    delivered=(
        *(f"ses_nplain{i:03d}" for i in range(240)),
        *("ses_n503-s503x2", "ses_ndrop-dropx1", "ses_nh500-h500x2", "ses_nanon-anon"),
    ),
    dead={
        "ses_n404-s404": ("fetch", "not_found"),
        "ses_nnotjson-notjson": ("validate", "invalid_payload"),
        "ses_nh410-h410": ("deliver:webhook", "gone"),
    },
)


@dataclass
class Findings:
    """What one run found."""

    scenario: str
    number: int
    seed: int = 0
    accepted: int = 0
    delivered: dict[str, int] = field(default_factory=dict)  # destination → sessions
    dead: int = 0  # sessions with a dead letter
    reconciled: int = 0  # ffe:metrics sessions_reconciled|
    duplicate_receipts: int = 0  # webhook 2xx receipts beyond one per session
    duplicate_entries: int = 0  # stream entries beyond one per session
    # Of those, how many repeat a first one that a kill followed within REPEAT_WINDOW_S: the
    # delivery went through, its record was never written (the one repeat the design allows).
    receipts_at_kill: int = 0
    entries_at_kill: int = 0
    # Each repeated webhook receipt's session and what the workers' logs say of it.
    repeated: dict[str, str] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)
    kill_times: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, wall)
    cuts: Cuts | None = None
    answers: Counter[str] = field(default_factory=Counter)  # the ingress's, by status
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing wrong."""
        return not self.problems

    @property
    def lost(self) -> int:
        """Accepted sessions some destination never got though it should have."""
        return len({p.split(":", 1)[0] for p in self.problems if ": LOST," in p})

    def line(self) -> str:
        """The run in one line."""
        delivered = " ".join(f"{k} {v}" for k, v in self.delivered.items())
        parts = [
            f"{self.scenario:8} #{self.number:<2} seed {self.seed:<10}",
            f"accepted {self.accepted}",
            f"delivered {delivered}",
            f"dead {self.dead}",
            f"reconciled {self.reconciled}",
            f"dup receipts {self.duplicate_receipts}{self._at_kill(self.receipts_at_kill)}",
            f"dup stream {self.duplicate_entries}{self._at_kill(self.entries_at_kill)}",
        ]
        if self.kills:
            parts.append("kills " + " ".join(f"{k} {v}" for k, v in sorted(self.kills.items())))
        if self.cuts is not None:
            parts.append(f"cuts {self.cuts.total} ({self.cuts.request} req, {self.cuts.reply} rep)")
        if self.answers:
            parts.append("ingress " + " ".join(f"{k}×{v}" for k, v in sorted(self.answers.items())))
        parts.append(f"{self.seconds:.0f} s")
        parts.append("OK" if self.ok else f"LOST {self.lost}, {len(self.problems)} PROBLEM(S)")
        return " | ".join(parts)

    def _at_kill(self, count: int) -> str:
        return f" ({count} at a kill)" if self.kills else ""

    def report(self) -> str:
        """The line, every repeated receipt, then every problem."""
        repeated = [f"    repeated receipt: {sid} ({why})" for sid, why in self.repeated.items()]
        problems = [f"    {problem}" for problem in self.problems]
        return "\n".join([self.line(), *repeated, *problems])


@dataclass(frozen=True)
class Services:
    """What a run needs besides the processes it starts: Redis, FunnelFox, the receiver."""

    redis: EmbeddedRedis
    simulator: FunnelFoxSimulator
    receiver: WebhookReceiver
    overrides: dict[str, str] = field(default_factory=dict)  # e.g. a control run's settings

    def env(self, redis_url: str) -> dict[str, str]:
        """The fleet's environment, reaching Redis at ``redis_url``."""
        base = fleet_env(
            redis_url, self.simulator.base_url, self.receiver.url, self.simulator.secret
        )
        return {**base, **TIMINGS, "OUTPUT_STREAM": STREAM, **self.overrides}


def now() -> tuple[float, float]:
    """This moment on both clocks: (monotonic, Unix)."""
    return time.monotonic(), time.time()


def pause(seconds: float) -> None:
    """Let the fleet run ``seconds`` before the next fault: the chaos schedule itself, not a
    wait for some state (those are conditions with deadlines)."""
    threading.Event().wait(seconds)


# -- the fleet -----------------------------------------------------------------------------------


class Fleet:
    """Workers from the Procfile line; a SIGKILLed one is replaced at once."""

    def __init__(self, env: dict[str, str], size: int) -> None:
        self.env = env
        self.workers = [spawn_worker(env) for _ in range(size)]
        self.outputs: list[str] = []

    def ready(self) -> list[Process]:
        """The workers that are up and consuming."""
        return [w for w in self.workers if w.popen.poll() is None and " ready." in w.output]

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every worker is ready."""
        return wait_until(lambda: len(self.ready()) == len(self.workers), timeout_s, 0.2)

    def kill_one(self, rng: random.Random) -> tuple[float, float]:
        """SIGKILL a consuming worker (its whole process group) and start another; when."""
        if not wait_until(lambda: bool(self.ready()), 90, 0.2):
            raise RuntimeError("no worker became ready:\n" + self.output())
        victim = rng.choice(self.ready())
        killed_at = now()
        victim.kill()
        self.outputs.append(victim.output)
        self.workers.remove(victim)
        self.workers.append(spawn_worker(self.env))
        return killed_at

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL)."""
        for worker in self.workers:
            worker.stop()
            self.outputs.append(worker.output)
        self.workers = []

    def output(self) -> str:
        """Every worker's output, the killed ones' included."""
        return "\n".join([*self.outputs, *(w.output for w in self.workers)])


class Feeder(threading.Thread):
    """Enqueues ids in waves as ``python -m worker enqueue`` does, each wave again until it went
    through whole (Redis may be down at that moment): then its ids are accepted."""

    def __init__(self, redis_url: str, waves: list[list[str]], interval_s: float) -> None:
        super().__init__(name="feeder", daemon=True)
        self.redis_url = redis_url
        self.waves = waves
        self.interval_s = interval_s
        self.accepted: set[str] = set()
        self.failures = 0
        self.problems: list[str] = []
        self._hurry = threading.Event()

    def hurry(self) -> None:
        """Send what is left without waiting between waves."""
        self._hurry.set()

    def run(self) -> None:
        for wave in self.waves:
            if self._send(wave):
                self.accepted.update(wave)
            else:
                self.problems.append(f"a wave of {len(wave)} ids could not be enqueued in 120 s")
            self._hurry.wait(self.interval_s)

    def _send(self, wave: list[str]) -> bool:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            producer = Producer.connect(self.redis_url, timeout_s=2)
            try:
                enqueue_ids(wave, producer, batch_size=BATCH_SIZE)
                return True
            except Exception:  # Redis away: send the whole wave again, as an operator would
                self.failures += 1
                pause(0.3)
            finally:
                producer.close()
        return False


def waves(ids: Sequence[str], count: int, rng: random.Random) -> list[list[str]]:
    """``ids`` shuffled into ``count`` waves."""
    shuffled = list(ids)
    rng.shuffle(shuffled)
    return [shuffled[n::count] for n in range(count)]


# -- settling and judging ------------------------------------------------------------------------


def idle(client: redis.Redis) -> bool:
    """Nothing queued, held, scheduled or unfinished."""
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in QUEUES:
                pipe.llen(queue)
            pipe.hlen(KOMBU_UNACKED)
            pipe.zcard(DUE)
            pipe.zcard(LEDGER_OPEN)
            return not any(pipe.execute())
    except redis.RedisError:
        return False


def settle(client: redis.Redis, timeout_s: float) -> bool:
    """Wait until the fleet is idle and stays so for a second (a message between kombu's BRPOP
    and its unacked record is in neither place for a moment)."""
    since: list[float] = []

    def still() -> bool:
        if not idle(client):
            since.clear()
            return False
        since.append(since[0] if since else time.monotonic())
        return time.monotonic() - since[0] >= 1.0

    return wait_until(still, timeout_s, interval_s=0.2)


def where_things_are(client: redis.Redis) -> str:
    """What a run that never settled left behind."""
    try:
        queues = {queue: client.llen(queue) for queue in QUEUES}
        unfinished = [m.decode() for m in client.zrange(LEDGER_OPEN, 0, 4)]
        entries = {sid: client.hgetall(ledger_key(sid)) for sid in unfinished}
        return (
            f"queues {queues}, unacked {client.hlen(KOMBU_UNACKED)}, due {client.zcard(DUE)}, "
            f"unfinished {client.zcard(LEDGER_OPEN)}, e.g. {entries}"
        )
    except redis.RedisError as exc:
        return f"Redis does not answer ({exc})"


def judge(
    findings: Findings,
    catalogue: Catalogue,
    accepted: set[str],
    receiver: WebhookReceiver,
    client: redis.Redis,
) -> None:
    """Where every accepted id ended, against where it must end."""
    receipts: dict[str, list[str]] = defaultdict(list)
    received_at: dict[str, list[float]] = defaultdict(list)
    for attempt in receiver.deliveries():
        if not attempt.verified:
            findings.problems.append(f"{attempt.session_id}: a receipt that is not verified")
        receipts[attempt.session_id].append(attempt.webhook_id)
        received_at[attempt.session_id].append(attempt.received_at)
    added_at: dict[str, list[float]] = defaultdict(list)
    for entry_id, fields in client.xrange(STREAM, "-", "+"):
        milliseconds = int(entry_id.split(b"-")[0])  # Redis's clock: Unix time
        added_at[fields[b"session_id"].decode()].append(milliseconds / 1000)
    entries = Counter({k: len(v) for k, v in added_at.items()})
    letters = dead_letters(client)
    findings.accepted = len(accepted)
    findings.delivered = {"webhook": len(receipts), "stream": len(entries)}
    findings.dead = len({key.split("|", 1)[1] for key in letters})
    monotonic_kills = [at for at, _ in findings.kill_times]
    wall_kills = [at for _, at in findings.kill_times]
    findings.duplicate_receipts, findings.receipts_at_kill = repeats(received_at, monotonic_kills)
    findings.repeated = {
        sid: why_repeated(sid, findings.logs) for sid, ids in receipts.items() if len(ids) > 1
    }
    findings.duplicate_entries, findings.entries_at_kill = repeats(added_at, wall_kills)
    got = {"webhook": Counter({k: len(v) for k, v in receipts.items()}), "stream": entries}
    for session_id in sorted(accepted):
        findings.problems += destination_problems(session_id, catalogue, got)
        if len(set(receipts.get(session_id, []))) > 1:
            findings.problems.append(f"{session_id}: several webhook-ids {receipts[session_id]}")
    for session_id in sorted((set(receipts) | set(entries)) - accepted):
        findings.problems.append(f"{session_id}: delivered, never accepted")
    findings.problems += letter_problems(catalogue, accepted, letters)
    findings.problems += ledger_problems(catalogue, accepted, client)


REPEAT_WINDOW_S = 2.0
_RETRY_LINE = re.compile(
    r"will retry session_id=(\S+) stage=deliver:webhook .*?error=([^:\n]{1,40})"
)


def why_repeated(session_id: str, logs: Sequence[str]) -> str:
    """Why a webhook receipt came twice, as far as the workers' logs tell: the delivery was
    retried after an error (the receiver answered, the worker did not hear it in time), its
    record was not written (the task failed as a whole right after the 2xx), or nothing says
    (a kill, or the message redelivered)."""
    errors = {
        found.group(2)
        for text in logs
        for found in _RETRY_LINE.finditer(text)
        if found.group(1) == session_id
    }
    if errors:
        return "retried after " + ",".join(sorted(errors))
    unrecorded = {
        outcome
        for text in logs
        for found in re.finditer(
            rf"/(ForkPoolWorker-\d+)\] worker\.pipeline: delivered "
            rf"session_id={re.escape(session_id)} stage=deliver:webhook .*\n",
            text,
        )
        if (outcome := _failed_next(text, found.end(), found.group(1)))
    }
    if unrecorded:
        return (
            "its record not written: the task failed after the 2xx ("
            + ",".join(sorted(unrecorded))
            + ")"
        )
    return "no retry logged"


def _failed_next(text: str, start: int, process: str) -> str:
    """The outcome when ``process``'s next line from ``start`` says its task failed as a
    whole, else ""."""
    for line in text[start:].splitlines()[:50]:
        if f"/{process}]" in line:
            failed = re.search(r"stage failed as a whole.*?outcome=(\w+)", line)
            return failed.group(1) if failed else ""
    return ""


def repeats(times: dict[str, list[float]], kills: Sequence[float]) -> tuple[int, int]:
    """Deliveries beyond one per session, and how many of those repeat a first delivery that
    a kill followed within REPEAT_WINDOW_S."""
    total = at_kill = 0
    for stamps in times.values():
        extra = len(stamps) - 1
        if extra <= 0:
            continue
        total += extra
        first = min(stamps)
        if any(0 <= kill - first <= REPEAT_WINDOW_S for kill in kills):
            at_kill += extra
    return total, at_kill


def destination_problems(
    session_id: str, catalogue: Catalogue, got: dict[str, Counter[str]]
) -> list[str]:
    """Each destination got ``session_id`` if and only if it must."""
    problems = []
    for destination in DESTINATIONS:
        must = catalogue.expected(session_id, destination)
        has = got[destination][session_id] > 0
        if must and not has:
            problems.append(f"{session_id}: LOST, never delivered to {destination}")
        elif has and not must:
            problems.append(f"{session_id}: delivered to {destination}, should be dead before")
    return problems


def letter_problems(
    catalogue: Catalogue, accepted: set[str], letters: dict[str, dict[str, Any]]
) -> list[str]:
    """Every dead id has its dead letter with its reason, and nothing else has one."""
    problems = []
    for session_id, (stage, reason) in catalogue.dead.items():
        if session_id not in accepted:
            continue
        letter = letters.get(f"{stage}|{session_id}")
        if letter is None:
            problems.append(f"{session_id}: no dead letter at {stage}")
        elif letter["reason"] != reason:
            problems.append(f"{session_id}: dead-lettered as {letter['reason']}, not {reason}")
    for key, letter in sorted(letters.items()):
        stage, session_id = key.split("|", 1)
        if catalogue.dead.get(session_id, ("",))[0] != stage:
            problems.append(f"{session_id}: unexpected dead letter {stage} {letter['reason']}")
    return problems


def ledger_problems(catalogue: Catalogue, accepted: set[str], client: redis.Redis) -> list[str]:
    """The ledger says each accepted id is finished, the way it did finish."""
    ids = sorted(accepted)
    with client.pipeline(transaction=False) as pipe:
        for session_id in ids:
            pipe.hget(ledger_key(session_id), "st")
        pipe.zcard(LEDGER_OPEN)
        *states, unfinished = pipe.execute()
    problems = [f"the ledger holds {unfinished} unfinished session(s)"] if unfinished else []
    for session_id, state in zip(ids, states, strict=True):
        want = b"dead" if session_id in catalogue.dead else b"delivered"
        if state != want:
            problems.append(f"{session_id}: the ledger says {state!r}, not {want.decode()}")
    return problems


def reconciled(client: redis.Redis) -> int:
    """Sessions the reconcilers published again."""
    return int(float(client.hget(METRICS, "sessions_reconciled|") or 0))


def leaked_secrets(texts: Sequence[str], fox_secret: str) -> list[str]:
    """Which secrets show up in ``texts`` (logs, dead letters)."""
    return [
        secret[:6] + "…"
        for secret in (fox_secret, *SECRETS)
        if any(secret in text for text in texts)
    ]


# -- the scenarios -------------------------------------------------------------------------------


def run_chaos(
    number: int, services: Services, rng: random.Random, *, events: int = 10, workers: int = 2
) -> Findings:
    """Two workers consume while workers and Redis are SIGKILLed at random moments."""
    seed = rng.randrange(2**31)
    rng = random.Random(seed)
    findings = Findings("chaos", number, seed)
    started = time.monotonic()
    env = services.env(services.redis.url)
    client = redis.Redis.from_url(services.redis.url, socket_timeout=10)
    services.simulator.set_latency(250)  # fetches are in flight when the kills come
    fleet = Fleet(env, workers)
    feeder = Feeder(services.redis.url, waves(CHAOS.ids, 12, rng), interval_s=1.3)
    try:
        if not fleet.wait_ready(120):
            raise RuntimeError("the workers did not start:\n" + fleet.output())
        feeder.start()
        kinds = ["worker", "redis"] * (events // 2) + ["worker"] * (events % 2)
        rng.shuffle(kinds)
        for kind in kinds:
            pause(rng.uniform(0.3, 2.0))
            if kind == "worker":
                findings.kill_times.append(fleet.kill_one(rng))
            else:
                findings.kill_times.append(now())
                services.redis.restart(kill=True)  # SIGKILL; back on the same AOF
            findings.kills[kind] += 1
        feeder.hurry()
        feeder.join(240)
        services.simulator.set_latency(0)
        findings.problems += feeder.problems
        if not settle(client, 180):
            findings.problems.append("never settled: " + where_things_are(client))
    finally:
        fleet.stop()
    findings.logs = [fleet.output()]
    judge(findings, CHAOS, feeder.accepted, services.receiver, client)
    findings.reconciled = reconciled(client)
    findings.seconds = time.monotonic() - started
    client.close()
    return findings


def event(session_id: str) -> dict[str, Any]:
    """A FunnelFox onboarding.completed event for ``session_id``."""
    return {
        "id": f"evt_{session_id}",
        "type": "onboarding.completed",
        "created_at": int(time.time()),
        "is_sandbox": False,
        "project_id": "01HZX3P7Q0V1M2N3B4C5D6E7PR",
        "funnel_id": "01HZX3P7Q0V1M2N3B4C5D6E7FN",
        "profile_id": "pro_01HZX3P7Q0V1M2N3B4C5D6E7PF",
        "session_id": session_id,
    }


class Poster:
    """POSTs events to the ingress as FunnelFox does: again on 409, 503 or a dropped
    connection, until it is answered 202 (enqueued) or 200 (a duplicate of one enqueued)."""

    def __init__(self, url: str, secret: str, deadline_s: float) -> None:
        self.url = url
        self.headers = {"Fox-Secret-Key": secret}
        self.deadline = time.monotonic() + deadline_s
        self.answers: Counter[str] = Counter()
        self.problems: list[str] = []
        self._lock = threading.Lock()

    def post_all(self, session_ids: Sequence[str], threads: int = 6) -> set[str]:
        """The ids accepted."""
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(self.post, session_ids))
        return {sid for sid, ok in zip(session_ids, results, strict=True) if ok}

    def post(self, session_id: str) -> bool:
        """Whether the ingress accepted the event, in the end."""
        body = event(session_id)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while time.monotonic() < self.deadline:
                try:
                    response = client.post(WEBHOOK_PATH, json=body, headers=self.headers)
                except httpx.HTTPError as exc:
                    self._count(type(exc).__name__)
                    pause(0.2)
                    continue
                self._count(str(response.status_code))
                if response.status_code in (200, 202):
                    return True
                if response.status_code not in (409, 503):
                    self._problem(f"{session_id}: ingress answered {response.status_code}")
                    return False
                pause(min(1.0, float(response.headers.get("retry-after") or 1)))
        self._problem(f"{session_id}: never accepted before the deadline")
        return False

    def _count(self, answer: str) -> None:
        with self._lock:
            self.answers[answer] += 1

    def _problem(self, problem: str) -> None:
        with self._lock:
            self.problems.append(problem)


def run_netfault(
    number: int,
    services: Services,
    rng: random.Random,
    *,
    cut_rate: float = 0.02,
    min_cuts: int = 300,
    workers: int = 2,
) -> Findings:
    """The workers and the ingress reach Redis through a proxy that cuts connections."""
    seed = rng.randrange(2**31)
    findings = Findings("netfault", number, seed)
    started = time.monotonic()
    client = redis.Redis.from_url(services.redis.url, socket_timeout=10)  # not through it
    proxy = FaultProxy(services.redis.port, seed=seed)
    proxy.start()
    env = services.env(proxy.url())
    services.simulator.set_latency(100)
    web, url = start_web(env)
    fleet = Fleet(env, workers)
    try:
        if not fleet.wait_ready(120):
            raise RuntimeError("the workers did not start:\n" + fleet.output())
        proxy.cut_rate = cut_rate
        poster = Poster(url, services.simulator.secret, deadline_s=240)
        order = list(NETFAULT.ids)
        rng.shuffle(order)
        accepted = poster.post_all(order)
        if not wait_until(lambda: proxy.cuts.total >= min_cuts, 180, 0.2):
            findings.problems.append(f"only {proxy.cuts.total} cuts in 180 s")
        proxy.cut_rate = 0.0
        services.simulator.set_latency(0)
        findings.problems += poster.problems
        findings.answers = poster.answers
        if not settle(client, 180):
            findings.problems.append("never settled: " + where_things_are(client))
    finally:
        fleet.stop()
        web.stop()
        proxy.stop()
    findings.logs = [fleet.output(), web.output]
    findings.cuts = proxy.cuts
    judge(findings, NETFAULT, accepted, services.receiver, client)
    findings.reconciled = reconciled(client)
    findings.seconds = time.monotonic() - started
    client.close()
    return findings


# -- make chaos ----------------------------------------------------------------------------------


@contextmanager
def services(
    *,
    aof: bool,
    overrides: dict[str, str] | None = None,
    fox_secret: str = "secret_chaos_0123456789",
) -> Iterator[Services]:
    """A Redis of the run's own, the FunnelFox simulator and a receiver; all gone after."""
    simulator = FunnelFoxSimulator(secret=fox_secret)
    receiver = WebhookReceiver(secret=DEMO_WEBHOOK_SECRET)
    with EmbeddedRedis(appendonly=aof) as server:
        simulator.start()
        receiver.start()
        try:
            yield Services(server, simulator, receiver, overrides or {})
        finally:
            receiver.stop()
            simulator.stop()


def keep_logs(findings: Findings) -> Path:
    """Where a run with problems leaves its processes' output."""
    folder = ROOT / "var" / "chaos"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{findings.scenario}-{findings.number:02d}-{findings.seed}.log"
    path.write_text(findings.report() + "\n\n" + "\n\n".join(findings.logs))
    return path


def tally(results: Sequence[Findings]) -> str:
    """The sums over runs of one scenario."""
    if not results:
        return ""
    kills: Counter[str] = Counter()
    for result in results:
        kills.update(result.kills)
    cuts = sum(r.cuts.total for r in results if r.cuts is not None)
    parts = [
        f"{results[0].scenario}: {sum(r.ok for r in results)}/{len(results)} runs OK",
        f"accepted {sum(r.accepted for r in results)}",
        f"lost {sum(r.lost for r in results)}",
        f"dead-lettered {sum(r.dead for r in results)}",
        f"reconciled {sum(r.reconciled for r in results)}",
        f"dup receipts {sum(r.duplicate_receipts for r in results)}",
        f"dup stream {sum(r.duplicate_entries for r in results)}",
    ]
    if kills:
        parts.append("kills " + " ".join(f"{k} {v}" for k, v in sorted(kills.items())))
    if cuts:
        parts.append(f"cuts {cuts}")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios; print each run and the tally; 1 if any run found a problem."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--chaos", type=int, default=20, help="chaos runs (default 20)")
    parser.add_argument("--netfault", type=int, default=5, help="network-fault runs (5)")
    parser.add_argument("--seed", type=int, default=None, help="for the whole series")
    parser.add_argument("--events", type=int, default=10, help="kills per chaos run")
    parser.add_argument("--cut-rate", type=float, default=0.02)
    parser.add_argument("--min-cuts", type=int, default=300, help="cuts per netfault run")
    parser.add_argument(
        "--reconcile-after-s",
        type=int,
        default=None,
        help="a control run: e.g. 3600 leaves lost messages lost (and the run fails)",
    )
    args = parser.parse_args(argv)
    overrides = (
        {} if args.reconcile_after_s is None else {"RECONCILE_AFTER_S": str(args.reconcile_after_s)}
    )
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    print(f"make chaos: {args.chaos} chaos run(s), {args.netfault} netfault run(s), seed {seed}")
    results: dict[str, list[Findings]] = {"chaos": [], "netfault": []}
    for number in range(1, args.chaos + 1):
        with services(aof=True, overrides=overrides) as running:
            found = run_chaos(number, running, rng, events=args.events)
        results["chaos"].append(found)
        announce(found)
    for number in range(1, args.netfault + 1):
        with services(aof=False, overrides=overrides) as running:
            found = run_netfault(
                number, running, rng, cut_rate=args.cut_rate, min_cuts=args.min_cuts
            )
        results["netfault"].append(found)
        announce(found)
    print("\ntally")
    for scenario in results.values():
        if scenario:
            print("  " + tally(scenario))
    return 0 if all(r.ok for runs in results.values() for r in runs) else 1


def announce(found: Findings) -> None:
    """Print a run as soon as it ends (with where its logs are, if it found problems or
    repeated receipts)."""
    print(found.report() if len(found.problems) <= 20 else found.line(), flush=True)
    if not found.ok or found.repeated:
        print(f"    logs: {keep_logs(found)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
