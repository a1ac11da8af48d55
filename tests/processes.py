"""Real worker processes for integration tests: started as the Procfile starts them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from workshop.procfile import local_command, procfile_command
from workshop.receiver import DEMO_WEBHOOK_SECRET
from workshop.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def fleet_env(
    redis_url: str, funnelfox_url: str, webhook_url: str, funnelfox_secret: str
) -> dict[str, str]:
    """Environment for worker, web and CLI processes: both sinks on, tiny retry delays; none
    of this shell's own settings for them."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                *("FUNNELFOX_", "WEBHOOK_", "RETRY_", "OUTPUT_", "WORKER_", "REDIS_"),
                *("VISIBILITY_", "LEDGER_", "RECONCILE_", "TASK_TIME_LIMIT_S"),
            )
        )
    }
    env.update(
        REDIS_URL=redis_url,
        FUNNELFOX_API_URL=funnelfox_url,
        FUNNELFOX_SECRET=funnelfox_secret,
        FUNNELFOX_TIMEOUT_S="2",
        WEBHOOK_URL=webhook_url,
        WEBHOOK_SECRET=DEMO_WEBHOOK_SECRET,
        WEBHOOK_TIMEOUT_S="2",
        OUTPUT_STREAM="test:enriched",
        RETRY_BACKOFF_BASE_S="0.05",
        RETRY_BACKOFF_MAX_S="0.5",
        RETRY_MAX_ATTEMPTS="4",
        WORKER_BATCH_SIZE="10",
        PYTHONUNBUFFERED="1",
    )
    return env


def lacking_database(server_url: str) -> str:
    """A Redis server's URL at the first database index it does not have."""
    client = redis.Redis.from_url(server_url)
    try:
        databases = int(client.config_get("databases")["databases"])
    finally:
        client.close()
    return f"{server_url.rsplit('/', 1)[0]}/{databases}"


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or the deadline passes; never a bare sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


def eventually(read: Callable[[], Any], expected: Any, timeout_s: float = 10) -> Any:
    """``read()`` once it equals ``expected`` or the deadline passed; the caller asserts.

    The fakes record a request when they answer it, so a slow one shows up late.
    """
    value = read()
    deadline = time.monotonic() + timeout_s
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


class Process:
    """A child process whose combined output is collected as it runs."""

    def __init__(self, command: list[str], env: Mapping[str, str], *, name: str) -> None:
        self.name = name
        self.node = ""  # a worker's Celery node name
        self.command = command
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.popen = subprocess.Popen(
            command,
            cwd=ROOT,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._lock:
                self._lines.append(line)

    @property
    def output(self) -> str:
        """Everything the process printed so far."""
        with self._lock:
            return "".join(self._lines)

    def wait_for_output(self, text: str, timeout_s: float) -> bool:
        """Wait until ``text`` appears in the output, or the process ends."""
        return (
            wait_until(lambda: text in self.output or self.popen.poll() is not None, timeout_s)
            and text in self.output
        )

    def signal(self, signum: int, *, group: bool = False) -> None:
        """Signal the process, as a supervisor would; ``group`` reaches its children too."""
        if self.popen.poll() is None:
            if group:
                os.killpg(self.popen.pid, signum)
            else:
                self.popen.send_signal(signum)

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it does not end in time; returns the exit status."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL, group=True)
                self.popen.wait(10)
        # Leave no orphan behind (a pool child, a grandchild) to disturb the next test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._reader.join(5)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group: nothing gets to clean up."""
        self.signal(signal.SIGKILL, group=True)
        self.popen.wait(10)
        self._reader.join(5)


def spawn_worker(env: Mapping[str, str], *, extra_args: list[str] | None = None) -> Process:
    """The Procfile's worker: line, with a unique node name, not waiting for it."""
    command = local_command(procfile_command("worker"))
    node = f"test-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    command += ["-n", node, *(extra_args or [])]
    process = Process(command, env, name="worker")
    process.node = node
    return process


def start_worker(env: Mapping[str, str], *, extra_args: list[str] | None = None) -> Process:
    """The Procfile's worker: line, with a unique node name, waiting until it is ready."""
    process = spawn_worker(env, extra_args=extra_args)
    if not process.wait_for_output(" ready.", timeout_s=60):
        process.stop()
        raise RuntimeError(f"worker did not start:\n{process.output}")
    return process


def procfile_line(name: str) -> str:
    """One Procfile command as written, for a shell to expand (``${PORT:-8000}``)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name:
            return command.strip()
    raise KeyError(name)


def start_web(env: Mapping[str, str]) -> tuple[Process, str]:
    """The Procfile's web: line through a shell, as honcho runs it, on a free $PORT; its URL."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    full_env = {**env, "PORT": str(port), "PATH": bin_dir + os.pathsep + env.get("PATH", "")}
    process = Process(["sh", "-c", "exec " + procfile_line("web")], full_env, name="web")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.popen.poll() is not None:
            return True
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(up, timeout_s=30) or process.popen.poll() is not None:
        process.stop()
        raise RuntimeError(f"web did not start:\n{process.output}")
    return process, url


def run_python(code: str, env: Mapping[str, str], *, check: bool = True) -> str:
    """Run a snippet in a child process with ``env`` (the project's settings); its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"snippet failed:\n{code}\n{done.stderr}")
    return done.stdout


def run_cli(
    args: list[str], env: Mapping[str, str], *, stdin: str | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m worker ARGS`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env=dict(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def dead_letters(client: Any) -> dict[str, dict[str, Any]]:
    """The dead-letter store, keyed ``<stage>|<session id>``."""
    return {k.decode(): orjson.loads(v) for k, v in client.hgetall("ffe:dlq").items()}


def settled(receiver: Any, client: Any, delivered: Iterable[str], dead: Iterable[str]) -> bool:
    """Whether every id in ``delivered`` reached the receiver and every one in ``dead`` has a
    dead letter (at any stage)."""
    got = {d.session_id for d in receiver.deliveries()}
    dead_ids = {key.split("|", 1)[1] for key in dead_letters(client)}
    return set(delivered) <= got and set(dead) <= dead_ids


def broker_state(client: Any, receiver: Any, expected: Iterable[str]) -> str:
    """What a failed wait needs to be understood: who is missing and where messages are."""
    got = {d.session_id for d in receiver.deliveries()}
    missing = sorted(set(expected) - got)
    queues = {q: client.llen(q) for q in ("enrich", "deliver.webhook", "deliver.stream")}
    other = sorted(
        k.decode()
        for k in client.scan_iter(count=1000)
        if not k.startswith((b"ffe:delivered:", b"celery-task-meta"))
    )
    return (
        f"missing {missing}; queues {queues}; unacked {client.hlen('unacked')}; "
        f"restore mutex ttl {client.ttl('unacked_mutex')}; dead letters {client.hlen('ffe:dlq')}; "
        f"keys {other}; undeliverable {client.lrange('ae.undeliver', 0, -1)}"
    )


QUEUES = ("enrich", "deliver.webhook", "deliver.stream")


def _control(worker: Process, env: Mapping[str, str], command: str, expect: str) -> None:
    """Send a remote-control command for every queue, again until the worker answers (it may
    be reconnecting to the broker)."""
    for queue in QUEUES:
        argv = [*local_command(["celery"]), "-A", "worker.app", "control", command, queue]
        replies: list[str] = []

        def answered(argv: list[str] = argv, replies: list[str] = replies) -> bool:
            reply = subprocess.run(
                [*argv, "-d", worker.node, "-t", "2"],
                cwd=ROOT,
                env=dict(env),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            replies.append(reply.stdout + reply.stderr)
            return expect in reply.stdout

        assert wait_until(answered, 40, interval_s=0.2), replies[-1]


def stop_consuming(worker: Process, env: Mapping[str, str]) -> None:
    """Ask a worker to take no more messages; those it holds stay in progress.

    kombu's Redis transport pops a message (BRPOP) and records it as unacknowledged in a
    second command: a crash of the worker or of Redis between the two loses that message
    (the ledger's reconciler publishes it again after RECONCILE_AFTER_S, see the README). The
    crash tests that pause consuming first test what a worker holds: every message it holds
    is delivered or returned without waiting for the reconciler. The chaos run never pauses.
    """
    _control(worker, env, "cancel_consumer", "no longer consuming")


def resume_consuming(worker: Process, env: Mapping[str, str]) -> None:
    """Undo stop_consuming."""
    _control(worker, env, "add_consumer", "add consumer")
