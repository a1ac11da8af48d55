"""The Procfile's web: and worker: processes together: a FunnelFox event ends delivered once."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import FOX_SECRET
from processes import Process, procfile_line, start_web, start_worker, wait_until

from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import WebhookReceiver
from workshop.redis_server import EmbeddedRedis, free_port

pytestmark = pytest.mark.integration

WEBHOOK = "/webhooks/funnelfox"
AUTH = {"Fox-Secret-Key": FOX_SECRET}


@pytest.fixture
def web(worker_env: dict[str, str]) -> Iterator[str]:
    process, url = start_web(worker_env)
    yield url
    process.stop()


def event(event_id: str, session_id: str, **changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "id": event_id,
        "type": "onboarding.completed",
        "created_at": 1716672462,
        "is_sandbox": False,
        "project_id": "01HZX3P7Q0V1M2N3B4C5D6E7PR",
        "funnel_id": "01HZX3P7Q0V1M2N3B4C5D6E7FN",
        "profile_id": "pro_01HZX3P7Q0V1M2N3B4C5D6E7PF",
        "session_id": session_id,
    }
    body.update(changes)
    return body


def test_an_event_is_delivered_once_with_its_trigger(
    web: str,
    worker_env: dict[str, str],
    receiver: WebhookReceiver,
    simulator: FunnelFoxSimulator,
) -> None:
    worker = start_worker(worker_env)
    try:
        with httpx.Client(base_url=web, timeout=5) as client:
            first = client.post(WEBHOOK, json=event("evt_e2e_1", "ses_E2E1"), headers=AUTH)
            again = client.post(WEBHOOK, json=event("evt_e2e_1", "ses_E2E1"), headers=AUTH)
            refused = client.post(
                WEBHOOK, json=event("evt_e2e_x", "ses_E2EX"), headers={"Fox-Secret": "nope"}
            )
            assert (first.status_code, again.status_code, refused.status_code) == (202, 200, 401)
            assert again.json()["status"] == "duplicate"
            assert receiver.wait_for(1, timeout=30), worker.output

            # A later event through the same path: once it is delivered, the duplicate had
            # every chance to be delivered too.
            sentinel = client.post(WEBHOOK, json=event("evt_e2e_2", "ses_E2E2"), headers=AUTH)
            assert sentinel.status_code == 202
            assert receiver.wait_for(2, timeout=30), worker.output
    finally:
        worker.stop()

    delivered = {a.session_id: a for a in receiver.deliveries()}
    assert sorted(delivered) == ["ses_E2E1", "ses_E2E2"]
    assert len(receiver.deliveries()) == 2
    assert len(simulator.requests_for("ses_E2E1")) == 1
    assert simulator.requests_for("ses_E2EX") == []
    payload = delivered["ses_E2E1"].payload
    assert payload["data"]["session"]["id"] == "ses_E2E1"
    assert payload["data"]["trigger"] == {
        "event_id": "evt_e2e_1",
        "type": "onboarding.completed",
        "created_at": 1716672462,
        "is_sandbox": False,
        "project_id": "01HZX3P7Q0V1M2N3B4C5D6E7PR",
        "funnel_id": "01HZX3P7Q0V1M2N3B4C5D6E7FN",
        "profile_id": "pro_01HZX3P7Q0V1M2N3B4C5D6E7PF",
    }


def test_answers_are_fast(web: str, capsys: pytest.CaptureFixture[str]) -> None:
    timings = []
    with httpx.Client(base_url=web, timeout=5) as client:
        for n in range(300):
            started = time.perf_counter()
            response = client.post(WEBHOOK, json=event(f"evt_t{n}", f"ses_T{n}"), headers=AUTH)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 202
    cuts = statistics.quantiles(timings, n=100)
    with capsys.disabled():
        print(
            f"\ningress enqueue answer over {len(timings)} requests: "
            f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms, "
            f"max {max(timings) * 1000:.1f} ms"
        )
    assert cuts[98] < 0.5


def test_the_web_process_with_its_broker_down(
    worker_env: dict[str, str], aof_redis: EmbeddedRedis
) -> None:
    # web checks Redis when it starts (a wrong REDIS_URL stops it there); the broker then
    # going away is what this is about.
    process, url = start_web({**worker_env, "REDIS_URL": aof_redis.url})
    aof_redis.stop(kill=True)
    try:
        with httpx.Client(base_url=url, timeout=5) as client:
            started = time.perf_counter()
            response = client.post(WEBHOOK, json=event("evt_down", "ses_DOWN"), headers=AUTH)
            elapsed = time.perf_counter() - started
            assert response.status_code == 503
            assert elapsed < 0.5
            assert client.get("/readyz").status_code == 503
            assert client.get("/healthz").status_code == 200
    finally:
        process.stop()
    print(f"broker down: 503 in {elapsed * 1000:.1f} ms")


def test_the_web_process_refuses_to_start_without_a_secret(worker_env: dict[str, str]) -> None:
    env = {k: v for k, v in worker_env.items() if k not in ("FUNNELFOX_SECRET", "INGRESS_SECRET")}
    env["PORT"] = str(free_port())
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    process = Process(["sh", "-c", "exec " + procfile_line("web")], env, name="web")
    assert wait_until(lambda: process.popen.poll() is not None, timeout_s=30)
    process.stop()

    assert process.popen.returncode != 0
    assert "INGRESS_SECRET" in process.output
    assert "FUNNELFOX_SECRET" in process.output
