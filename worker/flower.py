"""``python -m worker.flower``: Flower for this app, refusing to run without basic auth.

Flower shows every task's arguments and can revoke tasks, so it never starts open. It needs
only ``REDIS_URL`` and its own ``FLOWER_*`` variables: its Celery app (``worker.flower_app``)
knows the broker, not a worker's settings. The launcher checks the environment, then replaces
itself with ``celery -A worker.flower_app flower``:
the process a supervisor signals is Flower itself, whose SIGTERM handler saves its state and
exits 0. The credentials reach Flower through its own ``FLOWER_BASIC_AUTH`` variable, never
the command line, where ``ps`` would show them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from config import ConfigError
from config.flower import FlowerSettings, load_flower_settings
from config.settings import load_redis_url
from worker.redis_clients import require_reachable


def flower_command(settings: FlowerSettings, port: int) -> list[str]:
    """``celery -A worker.flower_app flower`` with this deployment's options (no credentials)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.flower_app",
        "flower",
        f"--port={port}",
        "--persistent=True",
        f"--db={settings.db}",
        f"--state_save_interval={round(settings.state_save_interval_s * 1000)}",
        f"--tasks_columns={settings.tasks_columns}",
    ]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Check the environment, then become Flower; exits 2 on a configuration error."""
    extra = list(sys.argv[1:] if argv is None else argv)
    try:
        settings, port = load_flower_settings()
        # worker.flower_app reads REDIS_URL at import; checking here names the variable.
        require_reachable(load_redis_url())
    except ConfigError as exc:
        print(f"funnelfox-enricher flower: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    assert settings.basic_auth is not None
    Path(settings.db).parent.mkdir(parents=True, exist_ok=True)
    # A value from .env is not in the environment Flower reads; hand it over explicitly.
    env = {**os.environ, "FLOWER_BASIC_AUTH": settings.basic_auth.get_secret_value()}
    command = flower_command(settings, port) + extra
    sys.stdout.flush()
    sys.stderr.flush()
    # Not a shell: the argument list goes to the interpreter as it is.
    os.execve(command[0], command, env)  # noqa: S606


if __name__ == "__main__":
    main()
