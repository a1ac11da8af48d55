"""Flower's settings: the ``FLOWER_*`` variables ``python -m worker.flower`` reads."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.settings import ConfigError

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
