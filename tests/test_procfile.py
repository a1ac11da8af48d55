"""Each Procfile line starts against a real Redis, answers or registers, and stops on SIGTERM.

A line runs as a process manager runs it: through ``sh -c`` (so ``${PORT:-8000}`` expands),
with ``exec`` so the program itself receives SIGTERM, the venv's scripts first on PATH.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.processes import ROOT, Process, run_cli, wait_until

pytestmark = pytest.mark.integration

AUTH = ("ops", "correct-horse-battery")


def procfile_line(name: str) -> str:
    """The raw command of one Procfile line."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name:
            return command.strip()
    raise KeyError(f"no {name}: line in the Procfile")


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_line(name: str, env: dict[str, str], port: int | None = None) -> Process:
    """One Procfile line, started as a process manager would start it."""
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    if port is not None:
        env["PORT"] = str(port)
    else:
        env.pop("PORT", None)
    return Process(["/bin/sh", "-c", f"exec {procfile_line(name)}"], env, name=name)


def answers(url: str, auth: tuple[str, str] | None = None) -> int | None:
    """The status of GET url, or None while nothing answers."""
    try:
        return httpx.get(url, auth=auth, timeout=2).status_code
    except httpx.TransportError:
        return None


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Processes a test started; whatever is still running at the end is stopped."""
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


def stop_cleanly(process: Process, expected: int = 0) -> None:
    """SIGTERM, then the process must exit with ``expected`` on its own within the deadline."""
    process.signal(signal.SIGTERM)
    try:
        code = process.popen.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{process.name} ignored SIGTERM:\n{process.output}")
    assert code == expected, f"{process.name} exited {code} on SIGTERM:\n{process.output}"


def start_worker_line(env: dict[str, str], processes: list[Process]) -> tuple[Process, str]:
    """The worker: line, ready, and its node name."""
    worker = start_line("worker", env)
    processes.append(worker)
    assert worker.wait_for_output(" ready.", timeout_s=60), worker.output
    match = re.search(r"(\S+@\S+) ready\.", worker.output)
    assert match, worker.output
    return worker, match.group(1)


def test_worker_line_registers_with_the_broker(
    worker_env: dict[str, str], processes: list[Process]
) -> None:
    worker, node = start_worker_line(worker_env, processes)
    ping_command = [sys.executable, "-m", "celery", "-A", "worker.app", "inspect", "ping"]
    ping = subprocess.run(
        [*ping_command, "-d", node, "--timeout", "10"],
        cwd=ROOT,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "pong" in ping.stdout
    stop_cleanly(worker)
    assert "Warm shutdown" in worker.output


def test_web_line_answers_health_and_readiness(
    worker_env: dict[str, str], processes: list[Process]
) -> None:
    port = free_port()
    web = start_line("web", worker_env, port)
    processes.append(web)
    base = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: answers(f"{base}/healthz") is not None, 30), web.output
    assert answers(f"{base}/healthz") == 200
    assert answers(f"{base}/readyz") == 200
    # Uvicorn shuts down gracefully, then re-raises the signal, so a supervisor sees the
    # conventional "terminated by SIGTERM" status rather than 0.
    stop_cleanly(web, expected=-signal.SIGTERM)
    assert "Application shutdown complete." in web.output
    # No access-log line: it would name the client's IP, and that is opt-in.
    assert '"GET /healthz' not in web.output


def test_web_access_log_is_opt_in(worker_env: dict[str, str], processes: list[Process]) -> None:
    port = free_port()
    web = start_line("web", {**worker_env, "LOG_CLIENT_IPS": "true"}, port)
    processes.append(web)
    base = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: answers(f"{base}/healthz") == 200, 30), web.output
    assert wait_until(lambda: "127.0.0.1" in web.output and '"GET /healthz' in web.output, 10)
    stop_cleanly(web, expected=-signal.SIGTERM)


def flower_env(worker_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The shared environment plus Flower's credentials and a state file of this test's."""
    return {
        **worker_env,
        "FLOWER_BASIC_AUTH": ":".join(AUTH),
        "FLOWER_DB": str(tmp_path / "state" / "flower.db"),
        "FLOWER_STATE_SAVE_INTERVAL_S": "0",
    }


def start_flower(env: dict[str, str], processes: list[Process]) -> tuple[Process, str]:
    """The flower: line on a free $PORT, once it answers."""
    port = free_port()
    flower = start_line("flower", env, port)
    processes.append(flower)
    base = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: answers(f"{base}/healthcheck") == 200, 60), flower.output
    return flower, base


def test_flower_line_asks_for_credentials_and_lists_workers_and_tasks(
    worker_env: dict[str, str], processes: list[Process], tmp_path: Path
) -> None:
    env = flower_env(worker_env, tmp_path)
    _, node = start_worker_line(worker_env, processes)
    flower, base = start_flower(env, processes)

    assert answers(f"{base}/") == 401
    assert answers(f"{base}/api/workers") == 401
    assert answers(f"{base}/", auth=("ops", "wrong")) == 401
    assert answers(f"{base}/", auth=AUTH) == 200
    # The command line carries no credentials (ps would show them).
    cmdline = Path(f"/proc/{flower.popen.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    assert b"flower" in cmdline
    assert AUTH[1].encode() not in cmdline

    session_id = "ses_01HZY3V8Q4KXN2T5R7W9PROCF1"
    assert run_cli(["enqueue", session_id], worker_env).returncode == 0

    def listed() -> bool:
        tasks = httpx.get(f"{base}/api/tasks", auth=AUTH, timeout=5).json()
        return any(
            session_id in str(t.get("args")) and t.get("state") == "SUCCESS" for t in tasks.values()
        )

    assert wait_until(listed, 60, interval_s=0.5), flower.output
    assert wait_until(
        lambda: node in httpx.get(f"{base}/api/workers", auth=AUTH, timeout=10).json(), 30
    )
    # Prometheus metrics: Flower serves them without credentials (counts, no task arguments).
    metrics = httpx.get(f"{base}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert "flower_events_total" in metrics.text

    stop_cleanly(flower)
    assert glob.glob(env["FLOWER_DB"] + "*"), "Flower saved no state at shutdown"

    # A restarted Flower still lists the task: its state outlived the process.
    _, base = start_flower(env, processes)
    assert listed()


def test_flower_needs_only_redis_url_and_its_own_variables(
    redis_url: str, redis_client: redis.Redis, processes: list[Process], tmp_path: Path
) -> None:
    """No sink, no FunnelFox secret: Flower reads REDIS_URL and FLOWER_* and nothing else."""
    ours = ("FUNNELFOX_", "WEBHOOK_", "OUTPUT_", "DESTINATIONS_", "REDIS_", "INGRESS_", "FLOWER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(
        REDIS_URL=redis_url,
        FLOWER_BASIC_AUTH=":".join(AUTH),
        FLOWER_DB=str(tmp_path / "flower.db"),
    )
    # A destination a worker registered: its queue is listed while no worker is online.
    redis_client.hset("ffe:sinks", "crm", '{"queue": "deliver.crm"}')

    flower, base = start_flower(env, processes)

    assert answers(f"{base}/api/workers", auth=AUTH) == 200
    broker = httpx.get(f"{base}/broker", auth=AUTH, timeout=10)
    assert broker.status_code == 200, flower.output
    assert "enrich" in broker.text
    assert "deliver.crm" in broker.text
    stop_cleanly(flower)


@pytest.mark.parametrize("value", ["", "   ", "no-colon", "user:", ":password"])
def test_flower_line_refuses_to_start_without_credentials(
    value: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    # Set explicitly (even empty), so a developer's .env cannot supply credentials.
    env = {**flower_env(worker_env, tmp_path), "FLOWER_BASIC_AUTH": value}
    flower = start_line("flower", env, free_port())
    try:
        code = flower.popen.wait(60)
    finally:
        flower.stop()
    assert code == 2, flower.output
    assert "FLOWER_BASIC_AUTH" in flower.output
