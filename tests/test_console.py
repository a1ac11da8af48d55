"""The console and every process on the edge: producer-only hosts, and a bad REDIS_URL.

``enqueue``, ``dlq`` and ``backfill`` produce by name, so they need only REDIS_URL (and
FUNNELFOX_SECRET for backfill); a REDIS_URL that is malformed or unreachable stops every
process with one line naming it, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from processes import ROOT, lacking_database, run_cli
from test_procfile import procfile_line

pytestmark = pytest.mark.integration

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def bare_env(**extra: str) -> dict[str, str]:
    """The machine's environment without any of this product's variables."""
    ours = (
        "FUNNELFOX_",
        "WEBHOOK_",
        "OUTPUT_",
        "DESTINATIONS_",
        "REDIS_",
        "INGRESS_",
        "FLOWER_",
        "WORKER_",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return {**env, **extra}


def test_enqueue_and_dlq_run_with_only_redis_url(
    redis_url: str, redis_client: redis.Redis, tmp_path: object
) -> None:
    env = bare_env(REDIS_URL=redis_url)

    enqueued = run_cli(["enqueue", "ses_only_redis_1", "ses_only_redis_2"], env)
    listed = run_cli(["dlq", "list"], env)
    purged = run_cli(["dlq", "purge"], env)

    assert enqueued.returncode == 0, enqueued.stderr
    assert "enqueued 2 session id(s)" in enqueued.stderr
    assert redis_client.llen("enrich") == 1  # one batch message
    assert listed.returncode == 0, listed.stderr
    assert purged.returncode == 0, purged.stderr


BAD_URLS = {
    "no scheme": ("localhost:6379", "must start with redis://"),
    "nothing listens": ("redis://127.0.0.1:1/0", "no Redis answers there"),
    "bad db index": ("redis://127.0.0.1:6379/zero", "database index that is not a whole number"),
    "db index too large": ("redis://127.0.0.1:6379/99999", "database index out of range (99999)"),
    # {lacking}: the test Redis, at the first database index it does not have.
    "db the server lacks": (
        "{lacking}",
        "Redis answered but refused: ResponseError: DB index is out of range",
    ),
}
PROCESSES = {
    "enqueue": [sys.executable, "-m", "worker", "enqueue", "ses_x"],
    "dlq list": [sys.executable, "-m", "worker", "dlq", "list"],
    "backfill": [sys.executable, "-m", "worker", "backfill", "--funnel-id", "f"],
    # The Procfile's lines, run by a shell as a process manager runs them.
    **{
        line: ["/bin/sh", "-c", f"exec {procfile_line(line)}"]
        for line in ("worker", "web", "flower")
    },
}


@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize("case", BAD_URLS)
def test_a_bad_redis_url_is_one_line_naming_it(
    process: str, case: str, redis_server_url: str
) -> None:
    url, expected = BAD_URLS[case]
    url = url.replace("{lacking}", lacking_database(redis_server_url))
    # Only a worker delivers, so only a worker is given a sink: every other process must name
    # REDIS_URL without one.
    sink = {"WEBHOOK_URL": "http://127.0.0.1:9/hook", "WEBHOOK_SECRET": WHSEC}
    env = bare_env(
        REDIS_URL=url,
        FUNNELFOX_SECRET="secret_x",
        FLOWER_BASIC_AUTH="ops:pw",
        PORT="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **(sink if process == "worker" else {}),
    )
    done = subprocess.run(
        PROCESSES[process], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert "REDIS_URL" in lines[0]
    assert expected in lines[0]
