"""Stopping a worker the way supervisors do: SIGTERM to its main process or to its whole group.

honcho, foreman and Heroku signal every process of a Procfile line, prefork children included.
Work in progress must finish all the same, with nothing counted as a failed attempt; and the
worker must stay stoppable: a hard time limit still ends a stuck task, SIGQUIT is still a cold
shutdown, and killing the main process still takes its children with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections import Counter

import pytest
import redis

from tests.processes import Process, run_cli, start_worker, wait_until
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import WebhookReceiver

pytestmark = pytest.mark.integration


@pytest.fixture
def slow_env(worker_env: dict[str, str]) -> dict[str, str]:
    # FunnelFox takes seconds to answer and the worker waits for it: a shutdown lands mid-task.
    return {**worker_env, "FUNNELFOX_TIMEOUT_S": "20", "VISIBILITY_TIMEOUT_S": "300"}


def enqueue(env: dict[str, str], ids: list[str]) -> None:
    result = run_cli(["enqueue", "-"], env, stdin="\n".join(ids) + "\n")
    assert result.returncode == 0, result.stderr


def retries_counted(client: redis.Redis) -> dict[str, int]:
    """Every retry the fleet's metrics counted, by field (``retries|reason=…,stage=…``)."""
    return {
        field.decode(): int(value)
        for field, value in client.hgetall("ffe:metrics").items()
        if field.startswith(b"retries|")
    }


def group_alive(process: Process) -> bool:
    """Whether any process is left in the worker's process group (its pool children)."""
    try:
        os.killpg(process.popen.pid, 0)
    except ProcessLookupError:
        return False
    # A zombie main process still counts until it is reaped.
    return process.popen.poll() is None or _members(process.popen.pid) > 0


def _members(pgid: int) -> int:
    listed = subprocess.run(
        ["ps", "-o", "pid=,stat=", "-g", str(pgid)], capture_output=True, text=True, check=False
    )
    return sum(1 for line in listed.stdout.splitlines() if "Z" not in line.split()[-1])


@pytest.mark.parametrize("group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_lets_work_in_progress_finish(
    group: bool,
    slow_env: dict[str, str],
    simulator: FunnelFoxSimulator,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    # Two batches of ten, one per pool process; each fetch takes 3 s at FunnelFox.
    ids = [f"ses_term{i:02d}-slow3000x1" for i in range(20)]
    enqueue(slow_env, ids)
    stopping = start_worker(slow_env)
    try:
        assert wait_until(lambda: simulator.in_flight == len(ids), 30), stopping.output
        stopping.signal(signal.SIGTERM, group=group)
        assert stopping.popen.wait(60) == 0, stopping.output
    finally:
        stopping.stop()
    # Every fetch in progress was answered and used; none was cut off and asked again.
    assert all(len(simulator.requests_for(sid)) == 1 for sid in ids), stopping.output
    assert "WorkerLostError" not in stopping.output
    assert "ERROR" not in stopping.output
    assert "will retry" not in stopping.output
    assert "Warm shutdown" in stopping.output

    # The deliveries it queued are made by the next worker, once each.
    successor = start_worker(slow_env)
    try:
        assert receiver.wait_for(len(ids), timeout=30, distinct=True), successor.output
        assert wait_until(lambda: redis_client.xlen("test:enriched") == len(ids), 30)
    finally:
        successor.stop()
    per_session = Counter(d.session_id for d in receiver.deliveries())
    assert per_session == dict.fromkeys(ids, 1)
    assert all(len(simulator.requests_for(sid)) == 1 for sid in ids)
    assert retries_counted(redis_client) == {}


def test_a_hard_time_limit_still_ends_a_stuck_task(
    worker_env: dict[str, str], simulator: FunnelFoxSimulator, receiver: WebhookReceiver
) -> None:
    env = {
        **worker_env,
        "FUNNELFOX_TIMEOUT_S": "60",
        "TASK_TIME_LIMIT_S": "4",
        "VISIBILITY_TIMEOUT_S": "10",
    }
    stuck = "ses_stuck-slow30000x1"  # the first answer would come after 30 s
    enqueue(env, [stuck])
    worker = start_worker(env)
    try:
        assert worker.wait_for_output("Hard time limit (4s) exceeded", 30), worker.output
        # The pool process running it was ended (billiard: SIGTERM, then SIGKILL after 0.1 s).
        assert wait_until(lambda: "exited with 'signal" in worker.output, 10), worker.output
        # The message was never acknowledged: it comes back and the second fetch is quick.
        assert receiver.wait_for(1, timeout=40, distinct=True), worker.output
    finally:
        assert worker.stop() == 0, worker.output
    assert [d.session_id for d in receiver.deliveries()] == [stuck]


def test_sigquit_after_sigterm_is_still_a_cold_shutdown(
    slow_env: dict[str, str], simulator: FunnelFoxSimulator, receiver: WebhookReceiver
) -> None:
    ids = [f"ses_cold{i:02d}-slow30000x1" for i in range(20)]
    enqueue(slow_env, ids)
    worker = start_worker(slow_env)
    try:
        assert wait_until(lambda: simulator.in_flight == len(ids), 30), worker.output
        worker.signal(signal.SIGTERM, group=True)
        assert worker.wait_for_output("Warm shutdown", 10), worker.output
        worker.signal(signal.SIGQUIT)
        # Well before the 30 s the fetches would take: the running tasks were cut short.
        assert wait_until(lambda: not group_alive(worker), 15), worker.output
        assert "Cold shutdown" in worker.output
    finally:
        worker.stop()
    assert receiver.accepted_count() == 0


def test_killing_the_main_process_takes_its_pool_with_it(
    slow_env: dict[str, str], simulator: FunnelFoxSimulator
) -> None:
    ids = [f"ses_kill{i:02d}-slow30000x1" for i in range(20)]
    enqueue(slow_env, ids)
    worker = start_worker(slow_env)
    try:
        assert wait_until(lambda: simulator.in_flight == len(ids), 30), worker.output
        worker.signal(signal.SIGKILL)  # the main process alone
        assert wait_until(lambda: not group_alive(worker), 10), worker.output
    finally:
        with contextlib.suppress(ProcessLookupError):
            worker.kill()
