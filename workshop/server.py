"""Shared aiohttp plumbing for the simulators: injected fault answers, routing, serving."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from types import TracebackType
from typing import ClassVar, NamedTuple, Self

import orjson
from aiohttp import web

from workshop.faults import SideFaults

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Route = tuple[str, str]

DROPPED = 0
"""The status recorded for a request whose connection was closed without an answer."""

# Cloudflare's codes are not in HTTPStatus; public FunnelFox clients retry 524.
_EXTRA_REASONS = {
    520: "Web Server Returned an Unknown Error",
    522: "Connection Timed Out",
    524: "A Timeout Occurred",
}


class Answer(NamedTuple):
    """What a fault decided: the status to record and the response to send."""

    status: int
    response: web.StreamResponse


@lru_cache(maxsize=256)
def reason(status: int) -> str:
    """The reason phrase for ``status``, also for codes outside the standard table."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_REASONS.get(status, "Unknown")


def error_response(status: int, headers: dict[str, str] | None = None) -> web.Response:
    """A FunnelFox-style error: ``{"message": "<reason>"}``."""
    phrase = reason(status)
    return web.Response(
        status=status,
        reason=phrase,
        body=orjson.dumps({"message": phrase}),
        content_type="application/json",
        headers=headers,
    )


async def apply_faults(request: web.BaseRequest, faults: SideFaults, attempt: int) -> Answer | None:
    """Delay, drop or fail the ``attempt``-th request as ``faults`` say; None lets it through."""
    if faults.slow_ms is not None and faults.slow_ms.hits(attempt):
        await asyncio.sleep(faults.slow_ms.value / 1000)
    if faults.drop is not None and faults.drop.hits(attempt):
        if request.transport is not None:
            request.transport.close()
        return Answer(DROPPED, web.Response())
    status = faults.status
    if status is None or not status.hits(attempt):
        return None
    headers: dict[str, str] = {}
    if (retry := faults.retry_after) is not None:
        headers["Retry-After"] = (
            formatdate(time.time() + retry.seconds, usegmt=True)
            if retry.http_date
            else str(retry.seconds)
        )
    if 300 <= status.value < 400:
        headers["Location"] = "/moved"
    return Answer(status.value, error_response(status.value, headers))


def display_host(host: str) -> str:
    """The host to put in URLs: a wildcard bind address is reached through loopback."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104 - a comparison


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed (about 25% more requests/s here), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def dispatch(routes: Mapping[Route, Handler], request: web.BaseRequest) -> web.StreamResponse:
    """Answer ``request`` with the handler of its exact (method, path), else 404."""
    handler = routes.get((request.method, request.path))
    if handler is None:
        return error_response(404)
    return await handler(request)


async def _start(handler: Handler, host: str, port: int) -> tuple[web.ServerRunner, int]:
    # aiohttp's low-level server: no router, no middleware chain, no access log, because the
    # simulators share a 2-core machine with the worker they measure.
    server = web.Server(handler, access_log=None)
    # A request parked in a slow fault must not hold a test's teardown for aiohttp's default 60 s.
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
    await site.start()
    return runner, runner.addresses[0][1]


# Starts serving on the running loop: the bound port, and how to stop serving.
Serve = Callable[[], Awaitable[tuple[int, Callable[[], Awaitable[None]]]]]


class LoopThread:
    """Something served on its own event loop in a daemon thread (the fake servers, the
    fault proxy)."""

    def __init__(self, serve: Serve, *, name: str, port: int = 0) -> None:
        self._serve = serve
        self._port = port
        self._name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port (known once ``start`` returned)."""
        return self._port

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The serving loop while it runs."""
        return self._loop

    def start(self, timeout_s: float = 10.0) -> int:
        """Start serving and return the bound port (port 0 picks a free one)."""
        if self._thread is not None:
            raise RuntimeError(f"{self._name} already started")
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise TimeoutError(f"{self._name} did not start within {timeout_s} s")
        if self._error is not None:
            raise RuntimeError(f"{self._name} failed to start") from self._error
        return self._port

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving (what is still open is dropped with the loop); wait for the thread."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is None or stopping is None or thread is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout_s)
        self._loop = self._stopping = None
        self._thread = None

    def _run(self) -> None:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._port, close = loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to the thread that called start()
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._stopping = asyncio.Event()
        self._loop = loop
        self._started.set()
        try:
            loop.run_until_complete(self._stopping.wait())
        finally:
            loop.run_until_complete(close())
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()


class ServerThread(LoopThread):
    """A request handler served on its own event loop in a daemon thread."""

    def __init__(self, handler: Handler, host: str, port: int, *, name: str) -> None:
        async def serve() -> tuple[int, Callable[[], Awaitable[None]]]:
            runner, bound = await _start(handler, host, port)
            return bound, runner.cleanup

        super().__init__(serve, name=name, port=port)


def run_foreground(handler: Handler, host: str, port: int, on_ready: Callable[[int], None]) -> None:
    """Serve ``handler`` until SIGINT or SIGTERM; ``on_ready`` gets the bound port."""

    async def main() -> None:
        runner, bound = await _start(handler, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        on_ready(bound)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())


class BackgroundServer(ABC):
    """A fake server run in a daemon thread: ``start()``/``stop()`` or a ``with`` block."""

    thread_name: ClassVar[str]
    host: str
    port: int
    _server: ServerThread | None = None

    @property
    @abstractmethod
    def address(self) -> str:
        """What a client configures to reach it."""

    @abstractmethod
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one HTTP request."""

    def start(self) -> str:
        """Serve in a daemon thread (port 0 picks a free port) and return the address."""
        self._server = ServerThread(self.handle, self.host, self.port, name=self.thread_name)
        self.port = self._server.start()
        return self.address

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.stop()
            self._server = None

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
