"""Redis with a standby on 127.0.0.1: a primary, replicas and Sentinels, each a redis-server.

For the failover tests and measurements: every server runs in a directory of its own with
its log there, on a free port, with Sentinel timeouts short enough that a killed primary is
replaced within seconds. Nothing here is used by the shipped product.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from workshop.delay_proxy import DelayProxy
from workshop.redis_server import free_port, redis_server_binary

HOST = "127.0.0.1"
MASTER_NAME = "ffe"


class Server:
    """One redis-server child process (a data node or a Sentinel) in a directory of its own."""

    def __init__(self, name: str, root: Path, argv: Sequence[str], *, port: int) -> None:
        self.name = name
        self.port = port
        self.directory = root / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = self.directory / "redis.log"
        self._argv = list(argv)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether its process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, *extra: str) -> None:
        """Start it (not waiting for it to answer), with ``extra`` arguments this time."""
        self._process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            [redis_server_binary(), *self._argv, *extra, "--logfile", str(self.log)],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self, timeout_s: float = 1.0) -> redis.Redis:
        """A client of this server alone."""
        return redis.Redis(
            HOST, self.port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    def kill(self) -> None:
        """SIGKILL: nothing is flushed, nothing is handed over."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: it answers nothing, as a hung or overloaded host, until ``resume``."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(5)
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(5)

    def tail(self, lines: int = 30) -> str:
        """The end of its log, for a failed test's message."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _answers(server: Server) -> bool:
    with server.client(0.2) as client:
        return bool(client.ping())


def _synced(replica: Server) -> bool:
    with replica.client(0.2) as client:
        info: dict[str, Any] = client.info("replication")
    return bool(info["master_link_status"] == "up")


def _streaming(primary: Server, replicas: int) -> bool:
    with primary.client(0.5) as client, client.pipeline(transaction=False) as pipe:
        pipe.publish("workshop:probe", b"")
        pipe.wait(replicas, 100)
        return bool(pipe.execute()[1] >= replicas)


def _sees(sentinel: Server, replicas: int, peers: int) -> bool:
    with sentinel.client(0.2) as client:
        state: dict[str, Any] = client.sentinel_master(MASTER_NAME)
    return int(state["num-slaves"]) == replicas and int(state["num-other-sentinels"]) == peers


def _primary_port(sentinel: Server) -> int:
    with sentinel.client(0.5) as client:
        address: Any = client.sentinel_get_master_addr_by_name(MASTER_NAME)
    return int(address[1])


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str | Callable[[], str]
) -> None:
    """Poll ``condition`` until it holds, counting a node or a Sentinel that does not answer
    yet as not holding; TimeoutError with ``what`` (called then, if a callable: the servers'
    logs as they are at the deadline) once ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(what if isinstance(what, str) else what())
        time.sleep(0.05)


class SentinelCluster:
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels watching it as ``ffe``.

    ``data_args`` go to every data node (primary and replicas alike, since a replica may
    become the primary), e.g. ``("--min-replicas-to-write", "1")``. With
    ``replication_delay_ms``, replicas replicate through a ``DelayProxy`` that dies with the
    primary: a standby on another host, whose last writes in flight a crash loses.

    With ``persistent``, every data node keeps an append-only file, so a node restarted after
    a kill comes back with its data. Without it a restarted node comes back empty, which is
    only safe when nothing restarts it: the Sentinels count a replica that has never synced
    as up to date, so if they fail over again before it has synced, they promote the empty
    node and the others resync from it, wiping every key (Redis's replication docs warn
    against exactly this setup). ``appendfsync everysec``, not compose's ``always``: what a
    killed process wrote is in the kernel's cache either way, and an fsync on each write
    can stall a node past the Sentinels' 1 s down-after on this shared disk, which they
    answer with a failover.
    """

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        data_args: Sequence[str] = (),
        replication_delay_ms: float = 0,
        persistent: bool = False,
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="ffe-sentinel-")
        root = Path(self._dir.name)
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        aof = ["yes", "--appendfsync", "everysec"] if persistent else ["no"]
        common = ["--bind", HOST, "--save", "", "--appendonly", *aof, *data_args]
        # A replica syncs at once rather than after the default 5 s wait for others to join.
        common += ["--maxmemory-policy", "noeviction", "--repl-diskless-sync-delay", "0"]
        primary_port = free_port()
        self.data: list[Server] = [
            Server("primary", root, ["--port", str(primary_port), *common], port=primary_port)
        ]
        self._links: list[DelayProxy] = []
        for index in range(replicas):
            port = free_port()
            upstream = primary_port
            if replication_delay_ms > 0:
                link = DelayProxy(primary_port, replication_delay_ms).start()
                self._links.append(link)
                upstream = link.port
            argv = ["--port", str(port), *common, "--replicaof", HOST, str(upstream)]
            self.data.append(Server(f"replica{index + 1}", root, argv, port=port))
        self.sentinels: list[Server] = []
        for index in range(sentinels):
            port = free_port()
            self.sentinels.append(Server(f"sentinel{index + 1}", root, [], port=port))
        # Each Sentinel is told its peers and the replicas up front, so it is ready at once
        # rather than after a round of hello messages (every 2 s) and INFO polls (every 10 s).
        ids = {s.port: f"{s.port:040x}" for s in self.sentinels}
        for sentinel in self.sentinels:
            config = sentinel.directory / "sentinel.conf"
            config.write_text(self._sentinel_config(sentinel.port, ids))
            sentinel._argv = [str(config), "--sentinel"]

    def _sentinel_config(self, port: int, ids: dict[int, str]) -> str:
        name = MASTER_NAME
        lines = [
            f"port {port}",
            f"bind {HOST}",
            f"sentinel myid {ids[port]}",
            f"sentinel monitor {name} {HOST} {self.data[0].port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        lines += [f"sentinel known-replica {name} {HOST} {r.port}" for r in self.data[1:]]
        lines += [
            f"sentinel known-sentinel {name} {HOST} {other} {runid}"
            for other, runid in ids.items()
            if other != port
        ]
        return "\n".join([*lines, ""])

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> SentinelCluster:
        """Start every server; return once each Sentinel knows the replicas and its peers."""
        for server in self.data:
            server.start()
        primary, replicas = self.data[0], self.data[1:]
        wait_for(partial(_answers, primary), timeout_s, "the primary did not start")
        for replica in replicas:
            wait_for(partial(_synced, replica), timeout_s, f"{replica.name} did not sync")
        # After a diskless sync the primary streams nothing new until the replica's first
        # acknowledgement (up to a second later): a write in between dies with the primary.
        wait_for(partial(_streaming, primary, len(replicas)), timeout_s, "replication is not on")
        for sentinel in self.sentinels:
            sentinel.start()
        for sentinel in self.sentinels:
            wait_for(
                partial(_sees, sentinel, len(replicas), len(self.sentinels) - 1),
                timeout_s,
                f"{sentinel.name} never saw everyone",
            )
        return self

    def close(self) -> None:
        """Stop every server and remove their directories."""
        for server in [*self.sentinels, *self.data]:
            server.stop()
        for link in self._links:
            link.close()
        self._dir.cleanup()

    def __enter__(self) -> SentinelCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what clients see ------------------------------------------------------------------------

    def url(self, db: int = 0) -> str:
        """``REDIS_URL`` for this cluster, in the product's Sentinel form."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"sentinel://{hosts}/{db}?master={MASTER_NAME}"

    def primary_port(self) -> int:
        """The port the Sentinels currently name as the primary's (any Sentinel that answers)."""
        for sentinel in self.sentinels:
            if sentinel.running:
                with contextlib.suppress(redis.RedisError, OSError):
                    return _primary_port(sentinel)
        raise RuntimeError("no Sentinel answers")

    def server(self, port: int) -> Server:
        """The data node on ``port``."""
        return next(s for s in self.data if s.port == port)

    def primary(self) -> Server:
        """The data node the Sentinels name as the primary."""
        return self.server(self.primary_port())

    def kill_primary(self) -> Server:
        """SIGKILL the current primary, and cut its delayed links; returns it (dead)."""
        primary = self.primary()
        # The link first: what the dying primary still sends must not reach the replica.
        for link in self._links:
            if link.target_port == primary.port:
                link.cut()
        primary.kill()
        return primary

    def rejoin(self, server: Server) -> None:
        """Start a killed data node again as a replica of the primary the Sentinels name, as
        compose's replica start script does: restarted as a primary, it would serve its old
        data as one until the Sentinels reconfigure it (up to ten seconds), and a failover
        in that window would promote it and lose every write since its kill."""
        server.start("--replicaof", HOST, str(self.primary_port()))

    def wait_for_new_primary(self, old: Server, timeout_s: float = 30.0) -> Server:
        """Once every live Sentinel names another primary and it says it is one: that node."""

        def promoted() -> bool:
            ports = {_primary_port(s) for s in self.sentinels if s.running}
            if len(ports) != 1 or old.port in ports:
                return False
            with self.server(ports.pop()).client(0.5) as client:
                info: dict[str, Any] = client.info("replication")
            return bool(info["role"] == "master")

        wait_for(
            promoted, timeout_s, lambda: "the Sentinels did not promote a replica:\n" + self.logs()
        )
        return self.primary()

    def failovers(self) -> int:
        """How many times the primary has changed, as the Sentinels logged it (the most any
        one of them saw)."""
        return max(s.tail(100_000).count("+switch-master") for s in self.sentinels)

    def failover_events(self) -> list[str]:
        """The first Sentinel's log lines saying a primary was down or replaced, with their
        times (for a test's message when the primary changed more than once)."""
        return [
            line.split(":X ", 1)[-1]
            for line in self.sentinels[0].tail(100_000).splitlines()
            if "+switch-master" in line or "+odown master" in line
        ]

    def logs(self, lines: int = 15) -> str:
        """The end of every server's log."""
        return "\n".join(
            f"--- {s.name} (port {s.port})\n{s.tail(lines)}" for s in [*self.data, *self.sentinels]
        )
