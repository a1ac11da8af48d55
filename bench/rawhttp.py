"""A minimal HTTP/1.1 client for the load generator: keep-alive connections, callbacks, no tasks.

aiohttp's client spent ~0.4 ms of CPU per POST here and, with one task per request, lagged by
up to 0.8 s at 1,000 POSTs/s on a loaded 2-core machine: the generator would have measured
itself. This one writes pre-built request bytes and reads ``Content-Length`` answers
(what uvicorn and aiohttp send); anything else it cannot read counts as a failed request.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

Done = Callable[[int, bytes], None]  # (status, body); status 0: no answer, -1: unreadable
# Servers close idle keep-alive connections (uvicorn after 5 s): never reuse one near that age.
STALE_AFTER_S = 3.0


class Origin:
    """Where requests go: host, port and the ``Host`` header."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"not a plain http URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.netloc = parts.netloc


def request_bytes(
    method: str, origin: Origin, path: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """One request, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {origin.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._done: Done | None = None
        self._body_at = -1
        self._end = -1
        self._status = 0
        self.last_used = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes, done: Done) -> None:
        """Write one request; ``done`` is called with its answer."""
        assert self._transport is not None
        self._done = done
        self._transport.write(data)

    def close(self) -> None:
        """Close the connection."""
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._body_at < 0:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(buffer[:head_end]).lower()
            length = _content_length(head)
            if length is None or not head.startswith(b"http/1.1 "):
                self._finish(-1, b"", reuse=False)
                return
            self._status = int(head[9:12])
            self._body_at, self._end = head_end + 4, head_end + 4 + length
        if len(buffer) >= self._end:
            body = bytes(buffer[self._body_at : self._end])
            del buffer[: self._end]
            self._finish(self._status, body, reuse=True)

    def _finish(self, status: int, body: bytes, *, reuse: bool) -> None:
        done, self._done = self._done, None
        self._body_at = self._end = -1
        self.last_used = time.monotonic()
        if reuse:
            self._pool.release(self)
        else:
            self.close()
        if done is not None:
            done(status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._pool.forget(self)
        done, self._done = self._done, None
        if done is not None:
            done(0, b"")


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a lower-cased response head; None without one."""
    name = b"\r\ncontent-length:"
    at = head.find(name)
    if at < 0:
        return None
    start = at + len(name)
    end = head.find(b"\r\n", start)
    try:
        return int(head[start:] if end < 0 else head[start:end])
    except ValueError:
        return None


class Pool:
    """Up to ``limit`` connections to one origin; requests wait in order for a free one."""

    def __init__(self, origin: Origin, limit: int) -> None:
        self.origin = origin
        self.limit = limit
        self.opened = 0
        self.failed_connects = 0
        self._idle: list[_Connection] = []  # a stack: the most recently used first
        self._live: set[_Connection] = set()
        self._waiting: collections.deque[tuple[bytes, Done]] = collections.deque()
        self._connecting = 0

    def send(self, data: bytes, done: Done) -> None:
        """Send ``data`` on a free connection, opening one if allowed, else wait for one."""
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.last_used < STALE_AFTER_S:
                connection.send(data, done)
                return
            connection.close()
        self._waiting.append((data, done))
        if len(self._live) + self._connecting < self.limit:
            self._connecting += 1
            asyncio.get_running_loop().create_task(self._open())

    async def warm(self, count: int) -> None:
        """Open ``count`` connections ahead of time."""
        for _ in range(min(count, self.limit)):
            self._connecting += 1
            await self._open()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(
                lambda: _Connection(self), self.origin.host, self.origin.port
            )
        except OSError:
            self._connecting -= 1
            self.failed_connects += 1
            if self._waiting and not self._live and not self._connecting:
                _, done = self._waiting.popleft()
                done(0, b"")
            return
        self._connecting -= 1
        self.opened += 1
        self._live.add(protocol)
        self.release(protocol)

    def release(self, connection: _Connection) -> None:
        """A connection is free: the oldest waiting request takes it, or it goes idle."""
        if self._waiting:
            data, done = self._waiting.popleft()
            connection.send(data, done)
        else:
            self._idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        """A connection closed."""
        self._live.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        """Close every connection."""
        for connection in list(self._live):
            connection.close()

    def fetch(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """``send`` as a future, for the rare request a coroutine waits on."""
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def done(status: int, body: bytes) -> None:
            if not future.done():
                future.set_result((status, body))

        self.send(data, done)
        return future
