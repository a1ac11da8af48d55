"""A TCP proxy on loopback that cuts connections at random: network faults for the tests.

Put between the processes and Redis (their ``REDIS_URL`` names the proxy), it forwards bytes
both ways. For each chunk it reads, with probability ``cut_rate``, it forwards only a random
part of the chunk (possibly none) and then closes the connection on both sides:

- a chunk from the client is a **request cut**: Redis gets half a command, or none of it;
- a chunk from Redis is a **reply cut**: the command ran, its answer (or the message a BRPOP
  took off a queue) never arrives whole.

Every cut is counted by kind. Only loopback addresses are accepted, for listening and for the
upstream alike.

    python -m workshop.faultproxy --upstream-port 6379 --port 6380 --cut-rate 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import random
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from workshop.server import LoopThread, new_event_loop

CHUNK_BYTES = 65536


def require_loopback(host: str) -> str:
    """``host`` if it is a loopback address (or ``localhost``); else ValueError."""
    if host == "localhost":
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address: the proxy only uses loopback") from None
    if not address.is_loopback:
        raise ValueError(f"{host} is not a loopback address: the proxy only uses loopback")
    return host


@dataclass(frozen=True)
class Cuts:
    """How many connections the proxy cut, by the direction of the chunk it cut."""

    request: int = 0
    reply: int = 0

    @property
    def total(self) -> int:
        """Both kinds."""
        return self.request + self.reply


class _Link:
    """One client connection and its upstream connection, closed together."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in self.writers:
            # close() sends what is buffered (the part of a cut chunk) before the FIN.
            with contextlib.suppress(Exception):
                writer.close()


class FaultProxy:
    """Forwards ``host:port`` to ``upstream_host:upstream_port``, cutting at ``cut_rate``.

    ``start()`` serves it in a daemon thread (port 0 picks a free port); ``cut_rate`` may be
    changed at any time from any thread.
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        host: str = "127.0.0.1",
        port: int = 0,
        cut_rate: float = 0.0,
        seed: int | float | str | None = None,
    ) -> None:
        self.upstream_host = require_loopback(upstream_host)
        self.upstream_port = upstream_port
        self.host = require_loopback(host)
        self.port = port
        self.cut_rate = cut_rate
        # Every request chunk holding these bytes is cut just before them (a targeted fault,
        # e.g. b"ZREM" for kombu's acknowledgements); None: only random cuts. A cut that always
        # fires can keep a client retrying: redis-py retries a WATCH/MULTI transaction whose
        # connection died for as long as it dies.
        self.cut_requests_containing: bytes | None = None
        self.connections = 0
        self._random = random.Random(seed)  # fault injection, not cryptography
        self._lock = threading.Lock()
        self._request_cuts = 0
        self._reply_cuts = 0
        self._links: set[_Link] = set()
        self._serving = LoopThread(self._serve, name="the fault proxy", port=port)

    @property
    def cut_rate(self) -> float:
        """The chance that a chunk read in either direction ends its connection."""
        return self._cut_rate

    @cut_rate.setter
    def cut_rate(self, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"cut_rate must be from 0 to 1, not {rate}")
        self._cut_rate = rate

    @property
    def cuts(self) -> Cuts:
        """The cuts so far."""
        with self._lock:
            return Cuts(self._request_cuts, self._reply_cuts)

    def url(self, db: int = 0) -> str:
        """A Redis URL that reaches the upstream through the proxy."""
        return f"redis://{self.host}:{self.port}/{db}"

    # -- serving -----------------------------------------------------------------------------

    async def listen(self) -> asyncio.Server:
        """Start listening (the bound port is then in ``port``)."""
        server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(server.sockets[0].getsockname()[1])
        return server

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.close()  # the upstream is down: so is this connection
            return
        with contextlib.suppress(OSError):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream_writer.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
        link = _Link(writer, upstream_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(reader, upstream_writer, link, "request"),
                self._pump(upstream_reader, writer, link, "reply"),
            )
        finally:
            self._links.discard(link)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        link: _Link,
        kind: str,
    ) -> None:
        try:
            while not link.closed:
                chunk = await source.read(CHUNK_BYTES)
                if not chunk:
                    break
                keep = self._cut_at(chunk, kind)
                if keep is not None:
                    sink.write(chunk[:keep])
                    self._count(kind)
                    break
                sink.write(chunk)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.close()

    def _cut_at(self, chunk: bytes, kind: str) -> int | None:
        """How much of ``chunk`` goes through before its connection is cut; None: all of it."""
        target = self.cut_requests_containing
        if target is not None and kind == "request" and target in chunk:
            return chunk.index(target)
        if self._cut_rate and self._random.random() < self._cut_rate:
            return self._random.randrange(len(chunk))
        return None

    def _count(self, kind: str) -> None:
        with self._lock:
            if kind == "request":
                self._request_cuts += 1
            else:
                self._reply_cuts += 1

    def sever_all(self, timeout_s: float = 5.0) -> int:
        """Close every open connection at once (as a network blip would); how many.

        For a proxy started with ``start()``; these are not counted as cuts.
        """
        loop = self._serving.loop
        if loop is None:
            return 0

        async def sever() -> int:
            links = list(self._links)
            for link in links:
                link.close()
            return len(links)

        return asyncio.run_coroutine_threadsafe(sever(), loop).result(timeout_s)

    # -- in a thread -------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> int:
        """Serve in a daemon thread; the bound port."""
        return self._serving.start(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving (open connections are dropped with the loop)."""
        self._serving.stop(timeout_s)

    async def _serve(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        server = await self.listen()

        async def close() -> None:
            server.close()

        return self.port, close

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the proxy in the foreground until SIGINT or SIGTERM; print the cuts at the end."""
    parser = argparse.ArgumentParser(prog="python -m workshop.faultproxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6380)
    parser.add_argument("--upstream-host", default="127.0.0.1")
    parser.add_argument("--upstream-port", type=int, default=6379)
    parser.add_argument("--cut-rate", type=float, default=0.02, help="chance per chunk read")
    parser.add_argument("--seed", default=None)
    args = parser.parse_args(argv)
    try:
        proxy = FaultProxy(
            args.upstream_port,
            upstream_host=args.upstream_host,
            host=args.host,
            port=args.port,
            cut_rate=args.cut_rate,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))

    async def run() -> None:
        server = await proxy.listen()
        print(
            f"fault proxy on {proxy.host}:{proxy.port} → {proxy.upstream_host}:"
            f"{proxy.upstream_port}, cutting {proxy.cut_rate:.2%} of chunks",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(run())
    cuts = proxy.cuts
    print(f"cuts: {cuts.total} ({cuts.request} mid-request, {cuts.reply} mid-reply)")


if __name__ == "__main__":
    main()
