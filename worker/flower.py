"""``python -m worker.flower``: Flower for this app, refusing to run without basic auth.

Flower shows every task's arguments and can revoke tasks, so it never starts open. The
launcher checks the environment, then replaces itself with ``celery -A worker.app flower``:
the process a supervisor signals is Flower itself, whose SIGTERM handler saves its state and
exits 0. The credentials reach Flower through its own ``FLOWER_BASIC_AUTH`` variable, never
the command line, where ``ps`` would show them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config import ConfigError, load_settings

DEFAULT_PORT = 5555
DEFAULT_TASKS_COLUMNS = "name,uuid,state,args,received,eta,runtime,worker"


class FlowerSettings(BaseSettings):
    """The ``FLOWER_*`` variables this launcher reads (Flower reads the same prefix)."""

    model_config = SettingsConfigDict(
        env_prefix="FLOWER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # user:password, or several separated by commas.
    basic_auth: SecretStr | None = None
    # $PORT, when a process manager sets it, wins over this.
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    # Flower's state (tasks, workers, counters) is kept here across restarts (a shelve file;
    # the directory is created if missing).
    db: str = "var/flower.db"
    # Saved this often as well as at shutdown, so a crash loses at most this much; 0 = only
    # at shutdown.
    state_save_interval_s: float = Field(60.0, ge=0)
    # The task list's columns: the arguments are session ids only (see worker.tasks), and a
    # retry is a new task with an ETA, so both are worth a column.
    tasks_columns: str = DEFAULT_TASKS_COLUMNS

    @field_validator("basic_auth")
    @classmethod
    def _credentials(cls, value: SecretStr | None) -> SecretStr | None:
        # Messages never echo the value: it holds passwords.
        if value is None or not value.get_secret_value().strip():
            return None
        for entry in value.get_secret_value().split(","):
            user, sep, password = entry.partition(":")
            if not (sep and user.strip() and password):
                raise ValueError("must be user:password (several separated by commas)")
        return value


def load_flower_settings(environ: Mapping[str, str] | None = None) -> tuple[FlowerSettings, int]:
    """The checked settings and the port to listen on; ConfigError names the variable."""
    environ = os.environ if environ is None else environ
    try:
        settings = FlowerSettings()
    except ValidationError as exc:
        problems = [f"FLOWER_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    if settings.basic_auth is None:
        raise ConfigError(
            "FLOWER_BASIC_AUTH is not set: Flower would show every task to anyone who reaches "
            "its port. Set FLOWER_BASIC_AUTH=user:password"
        )
    port = settings.port
    if environ.get("PORT"):
        try:
            port = int(environ["PORT"])
        except ValueError:
            raise ConfigError("PORT: must be a port number") from None
    return settings, port


def flower_command(settings: FlowerSettings, port: int) -> list[str]:
    """``celery -A worker.app flower`` with this deployment's options (no credentials)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
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
        # worker.app reads the same settings at import; checking here names the variable.
        load_settings()
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
