"""The deploy files agree with the Procfile and the settings; no Docker needed.

Rules checked here:
- every non-redis compose service runs its Procfile line, program and arguments alike, with
  ``${PORT:-N}`` resolved to N, the port the container listens on (a bare ``$PORT`` has no
  fixed value, so it is refused);
- every variable compose passes and every variable ``.env.example`` names is read by some
  settings model (or is one compose itself substitutes, like ``REDIS_MAXMEMORY``), and every
  variable a settings model reads is in ``.env.example``;
- Redis keeps an AOF synced before every answer, and a memory ceiling it never evicts under;
- the optional "sentinel" profile (a replica, three Sentinels) is off by default, its replica
  runs with the primary's persistence, memory ceiling and eviction policy, and with
  ``compose.sentinel.env`` every process's REDIS_URL names exactly its Sentinels and the
  primary they watch.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from tests.processes import ROOT

APP_SERVICES = ("worker", "web", "flower")
SENTINEL_SERVICES = ("redis-replica", "sentinel-1", "sentinel-2", "sentinel-3")
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
_MONITOR = re.compile(r"sentinel monitor (\S+) (\S+) (\d+) (\d+)")
_SETTINGS_CLASS = re.compile(r"^class \w+\(BaseSettings\):", re.MULTILINE)
_ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")
_PORT_DEFAULT = re.compile(r"\$\{PORT:-(\d+)\}")
_COMPOSE_VARIABLE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::?-([^}]*))?\}")
_MEMORY = re.compile(r"^\d+(b|kb|mb|gb)?$", re.IGNORECASE)


@cache
def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed (anchors and merge keys resolved)."""
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def service(name: str) -> dict[str, Any]:
    """One compose service."""
    services = compose()["services"]
    assert name in services, f"no {name} service in docker-compose.yml"
    return dict(services[name])


def interpolate(value: str, env: dict[str, str]) -> str:
    """``${NAME}`` and ``${NAME:-default}`` resolved as compose resolves them from ``env``."""
    return _INTERPOLATION.sub(lambda m: env.get(m.group(1)) or m.group(2) or "", value)


def compose_env_file(name: str) -> dict[str, str]:
    """A file for ``docker compose --env-file``: NAME=value lines."""
    entries = {}
    for line in (ROOT / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            entries[key.strip()] = value.strip()
    return entries


def text(command: str | list[str]) -> str:
    """A compose command as one string."""
    return " ".join(command) if isinstance(command, list) else command


def procfile() -> dict[str, str]:
    """The Procfile's lines by process name."""
    lines = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            lines[name.strip()] = command.strip()
    return lines


def resolve_port(command: str) -> str:
    """A Procfile command with ``${PORT:-N}`` as N; a bare $PORT has no fixed value."""
    resolved = _PORT_DEFAULT.sub(r"\1", command)
    assert "$" not in resolved, f"unresolvable variable in Procfile command: {command}"
    return resolved


def settings_models() -> list[type[BaseSettings]]:
    """Every pydantic-settings model defined in config/ and worker/ (found by their source)."""
    models: list[type[BaseSettings]] = []
    for package in ("config", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if not _SETTINGS_CLASS.search(path.read_text()):
                continue
            module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            module = importlib.import_module(module_name)
            models += [
                obj
                for obj in vars(module).values()
                if isinstance(obj, type)
                and issubclass(obj, BaseSettings)
                and obj is not BaseSettings
                and obj.__module__ == module_name
            ]
    return models


def env_names(model: type[BaseSettings]) -> set[str]:
    """The variables one model reads; a nested settings group is counted as its own model."""
    prefix = str(model.model_config.get("env_prefix") or "")
    names = set()
    for field_name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        names.add((alias or field.alias or prefix + field_name).upper())
    return names


@cache
def setting_names() -> frozenset[str]:
    """Every environment variable some settings model reads."""
    return frozenset(name for model in settings_models() for name in env_names(model))


def env_example() -> dict[str, tuple[str, bool]]:
    """.env.example's assignments: name -> (value, whether it is commented out)."""
    entries: dict[str, tuple[str, bool]] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match:
            entries[match.group(1)] = (match.group(2), line.lstrip().startswith("#"))
    return entries


# -- compose ----------------------------------------------------------------------------------


def test_compose_has_every_service() -> None:
    assert set(compose()["services"]) >= {"redis", *APP_SERVICES}


def compose_variables() -> dict[str, str | None]:
    """The variables docker compose substitutes in docker-compose.yml, with their defaults."""
    text = (ROOT / "docker-compose.yml").read_text()
    return {m.group(1): m.group(2) for m in _COMPOSE_VARIABLE.finditer(text)}


def redis_option(name: str) -> str:
    """The value of one ``--name value`` option on the redis service's command line."""
    command = service("redis")["command"]
    assert isinstance(command, list), "exec form, one argument per item"
    assert f"--{name}" in command, f"redis runs without --{name}"
    return str(command[command.index(f"--{name}") + 1])


def replica_options() -> dict[str, str]:
    """``--name value`` options of the redis-server the replica's start script execs."""
    script = text(service("redis-replica")["command"]).replace("\\\n", " ")
    starts = [line for line in script.splitlines() if line.strip().startswith("exec redis-server")]
    assert len(starts) == 1, "one exec redis-server line"
    argv = shlex.split(starts[0])[2:]
    return {
        option[2:]: value
        for option, value in pairwise(argv)
        if option.startswith("--") and not value.startswith("--")
    }


def test_redis_persists_every_acknowledged_write() -> None:
    # The README's durability statement rests on these two: an AOF, fsynced before Redis
    # answers, so a power loss loses nothing a client was told was written.
    assert redis_option("appendonly") == "yes"
    assert redis_option("appendfsync") == "always"
    redis = service("redis")
    assert redis["healthcheck"]["test"]
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])


def test_redis_has_a_memory_ceiling_and_never_evicts() -> None:
    assert redis_option("maxmemory-policy") == "noeviction"
    maxmemory = redis_option("maxmemory")
    variable = _COMPOSE_VARIABLE.fullmatch(maxmemory)
    assert variable, "overridable from .env: ${REDIS_MAXMEMORY:-<default>}"
    assert variable.group(1) == "REDIS_MAXMEMORY"
    default = variable.group(2) or ""
    assert _MEMORY.match(default), f"a size Redis reads: {default!r}"
    assert default not in ("0", "0b"), "a default ceiling (0 means none)"
    assert "REDIS_MAXMEMORY" in env_example(), ".env.example tells where to set it"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_service_runs_its_procfile_line(name: str) -> None:
    lines = procfile()
    assert name in lines, f"no {name}: line in the Procfile"
    command = service(name)["command"]
    assert isinstance(command, list), "exec form, so the program itself gets SIGTERM"
    assert command == shlex.split(resolve_port(lines[name]))


@pytest.mark.parametrize("name", APP_SERVICES)
def test_service_reads_the_env_file_and_the_compose_redis(name: str) -> None:
    app = service(name)
    env_files = app["env_file"] if isinstance(app["env_file"], list) else [app["env_file"]]
    assert ".env" in env_files
    environment = {k: interpolate(v, {}) for k, v in app["environment"].items()}
    assert environment["REDIS_URL"].startswith("redis://redis:6379/")
    assert environment["REDIS_WAIT_REPLICAS"] == "0"
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_sentinel_profile_is_optional() -> None:
    services = compose()["services"]
    profiled = {name for name, spec in services.items() if spec.get("profiles")}
    assert profiled == set(SENTINEL_SERVICES)
    assert all(services[name]["profiles"] == ["sentinel"] for name in profiled)
    for name, spec in services.items():
        if name not in profiled:
            assert not set(spec.get("depends_on") or {}) & profiled, name
    assert compose_env_file("compose.sentinel.env")["COMPOSE_PROFILES"] == "sentinel"


def test_the_replica_keeps_what_the_primary_keeps() -> None:
    primary, replica = service("redis"), service("redis-replica")
    command = text(replica["command"])
    # It follows whom the Sentinels name, `redis` when none answers (its first start).
    assert "sentinel get-master-addr-by-name ffe" in command
    assert "redis-cli -h $$sentinel -p 26379" in command
    assert "for sentinel in " + " ".join(SENTINEL_SERVICES[1:]) + ";" in command
    assert "set -- redis 6379" in command
    assert '--replicaof "$$1" "$$2"' in command
    # Promoted, it takes the primary's writes: the same durability, ceiling (same variable and
    # default) and eviction policy.
    replica_has = replica_options()
    for option in ("appendonly", "appendfsync", "maxmemory", "maxmemory-policy"):
        assert replica_has.get(option) == redis_option(option), option
    # Each announces its service name, so the Sentinels never hold a stale container IP.
    assert "--replica-announce-ip redis " in text(primary["command"]) + " "
    assert "--replica-announce-ip redis-replica" in command
    assert any(str(volume).endswith(":/data") for volume in replica["volumes"])
    assert replica["healthcheck"]["test"]


def test_the_sentinels_watch_the_primary_and_every_process_follows_them() -> None:
    from config.redis_url import parse_sentinel_url

    sentinels = [service(name) for name in SENTINEL_SERVICES[1:]]
    monitors = set()
    for sentinel in sentinels:
        found = _MONITOR.search(text(sentinel["command"]))
        assert found, "a Sentinel that monitors nothing"
        monitors.add(found.groups())
    assert len(monitors) == 1, "every Sentinel watches the same primary"
    ((master, host, port, quorum),) = monitors
    assert (host, port) == ("redis", "6379")
    assert f"get-master-addr-by-name {master}" in text(service("redis-replica")["command"])
    assert int(quorum) == len(sentinels) // 2 + 1, "a majority agrees the primary is down"
    volumes = [str(v).split(":")[0] for s in sentinels for v in s["volumes"]]
    assert len(set(volumes)) == len(sentinels), "each Sentinel keeps its own config"

    env = compose_env_file("compose.sentinel.env")
    for name in APP_SERVICES:
        environment = {k: interpolate(v, env) for k, v in service(name)["environment"].items()}
        url = parse_sentinel_url(environment["REDIS_URL"])
        assert url is not None, name
        assert url.master == master
        assert set(url.sentinels) == {(n, 26379) for n in SENTINEL_SERVICES[1:]}
        # An acknowledgement waits for the one replica there is.
        assert environment["REDIS_WAIT_REPLICAS"] == "1"


def test_workers_scale() -> None:
    worker = service("worker")
    # A fixed name or host port would stop `docker compose up --scale worker=N` at the second.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_web_listens_where_it_is_published_and_checked() -> None:
    web = service("web")
    port = _PORT_DEFAULT.search(procfile()["web"])
    assert port, "the web: line listens on ${PORT:-N}"
    assert any(str(p).endswith(f":{port.group(1)}") for p in web["ports"])
    assert f":{port.group(1)}/healthz" in " ".join(web["healthcheck"]["test"])


def test_flower_keeps_state_in_a_volume_and_listens_where_published() -> None:
    flower = service("flower")
    env = flower["environment"]
    port = env["FLOWER_PORT"]
    assert any(str(p).endswith(f":{port}") for p in flower["ports"])
    assert f":{port}/healthcheck" in " ".join(flower["healthcheck"]["test"])
    mounts = [str(v).split(":", 1)[1] for v in flower["volumes"]]
    assert any(env["FLOWER_DB"].startswith(mount.rstrip("/") + "/") for mount in mounts)
    # Flower must never run open: the launcher refuses without FLOWER_BASIC_AUTH, and compose
    # must not blank it out.
    assert env.get("FLOWER_BASIC_AUTH", "unset") != ""


def test_compose_passes_only_known_variables() -> None:
    for name in APP_SERVICES:
        unknown = set(service(name).get("environment") or {}) - setting_names()
        assert not unknown, f"{name}: no setting reads {sorted(unknown)}"


def test_dockerfile_runs_as_a_user_and_defaults_to_the_worker() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users, "the image must switch to a user"
    assert users[-1] not in ("root", "0")
    cmd = re.search(r"^CMD\s+(\[.*\])", dockerfile, re.MULTILINE)
    assert cmd
    assert yaml.safe_load(cmd.group(1)) == shlex.split(procfile()["worker"])


# -- .env.example -------------------------------------------------------------------------------


def test_env_example_names_only_settings() -> None:
    unknown = set(env_example()) - setting_names() - set(compose_variables())
    assert not unknown, f".env.example names variables no setting reads: {sorted(unknown)}"


def test_env_example_documents_every_setting() -> None:
    missing = setting_names() - set(env_example())
    assert not missing, f".env.example lacks {sorted(missing)}"


@pytest.mark.parametrize("uncomment", [False, True], ids=["as-is", "all-uncommented"])
def test_env_example_loads(
    uncomment: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Copied as it is, or with every example line switched on, the settings accept it."""
    from config import load_settings
    from config.flower import load_flower_settings
    from config.ingress import load_config

    for name in list(os.environ):
        if name in setting_names() or name == "PORT":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for name, (value, commented) in env_example().items():
        if name == "DESTINATIONS_FILE":
            value = str(ROOT / value)  # relative to the working directory, moved above
        if uncomment or not commented:
            monkeypatch.setenv(name, value)
    load_settings().check_for_worker()
    load_config()
    if uncomment:
        flower, port = load_flower_settings()
        assert port == 5555
        assert flower.basic_auth is not None


def test_every_app_service_can_read_a_destinations_file() -> None:
    """DESTINATIONS_FILE=/config/destinations.toml works in every service that reads the
    settings: they mount /config (Flower reads only REDIS_URL and FLOWER_*)."""
    services = compose()["services"]
    for name in ("worker", "web"):
        mounts = services[name].get("volumes", [])
        assert any(str(m).split(":")[1] == "/config" for m in mounts), name
