"""A fake FunnelFox public API: Get Session, List Sessions and a control API for tests."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from workshop.faults import parse_faults, parse_funnel_faults
from workshop.server import (
    BackgroundServer,
    Handler,
    Route,
    apply_faults,
    dispatch,
    display_host,
    error_response,
    run_foreground,
)
from workshop.sessions import Catalog, FunnelEntry, list_item_body, session_body

DEFAULT_SECRET = "secret_demo"  # noqa: S105 - the public demo key, not a credential
DEFAULT_PREFIX = "/public/v1"
_MAX_LIMIT = 100
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_JSON = "application/json"


def encode_cursor(page: int, offset: int) -> str:
    """An opaque cursor naming a page and its first row."""
    return base64.urlsafe_b64encode(f"{page}:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    """The (page, offset) inside a cursor; ValueError when it is not one of ours."""
    try:
        page, offset = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).split(b":")
        decoded = int(page), int(offset)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad cursor {cursor!r}") from exc
    if decoded[0] < 2 or decoded[1] < 0:
        raise ValueError(f"bad cursor {cursor!r}")
    return decoded


class FunnelFoxSimulator(BackgroundServer):
    """The fake API; ``start()`` serves it in a background thread, ``main()`` in the foreground."""

    thread_name = "funnelfox-sim"

    def __init__(
        self,
        secret: str = DEFAULT_SECRET,
        latency_ms: float = 0,
        funnels: Mapping[str, int] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        prefix: str = DEFAULT_PREFIX,
        record: bool = True,
    ) -> None:
        self.secret = secret
        self.latency_ms = latency_ms
        self.host = host
        self.port = port
        self.prefix = prefix.rstrip("/")
        # Off for long benchmark runs: the per-id history grows with every request.
        self.record = record
        self._catalog = Catalog(funnels)
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._requests: dict[str, list[tuple[float, int]]] = {}
        self._list_requests: list[dict[str, Any]] = []
        self._page_two: dict[str, int] = {}
        self._total = 0
        self._in_flight = 0
        self._session_path = self.prefix + "/sessions/"
        self._routes: dict[Route, Handler] = {
            ("GET", self.prefix + "/sessions"): self._list_sessions,
            ("GET", "/_sim/stats"): self._stats,
            ("POST", "/_sim/reset"): self._reset,
            ("POST", "/_sim/config"): self._config,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API base URL, as a client would configure it."""
        return f"http://{display_host(self.host)}:{self.port}{self.prefix}"

    @property
    def address(self) -> str:
        """The API base URL."""
        return self.base_url

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one HTTP request (the API and the ``/_sim`` control routes)."""
        path = request.path
        if path.startswith(self._session_path) and request.method == "GET":
            session_id = path[len(self._session_path) :]
            if _SESSION_ID.fullmatch(session_id):
                return await self._get_session(request, session_id)
        return await dispatch(self._routes, request)

    # -- thread-safe accessors ---------------------------------------------------------------

    def requests_for(self, session_id: str) -> list[tuple[float, int]]:
        """Every request seen for ``session_id``: (monotonic arrival time, status; 0 = dropped)."""
        with self._lock:
            return list(self._requests.get(session_id, ()))

    def list_requests(self) -> list[dict[str, Any]]:
        """Every ``GET /sessions`` request: arrival time, status, filters, cursor, limit."""
        with self._lock:
            return list(self._list_requests)

    @property
    def in_flight(self) -> int:
        """How many ``GET /sessions/{id}`` requests have arrived and are not answered yet."""
        return self._in_flight

    @property
    def total_requests(self) -> int:
        """How many API requests were answered (or dropped) since the last reset."""
        return self._total

    def reset(self) -> None:
        """Forget every request and fault counter (the configuration stays)."""
        with self._lock:
            self._attempts.clear()
            self._requests.clear()
            self._list_requests.clear()
            self._page_two.clear()
            self._total = 0

    def set_latency(self, latency_ms: float) -> None:
        """Delay every API answer by ``latency_ms``."""
        self.latency_ms = latency_ms

    def set_secret(self, secret: str) -> None:
        """Require ``secret`` in ``Fox-Secret`` from now on."""
        self.secret = secret

    def set_funnels(self, funnels: Mapping[str, int]) -> None:
        """Replace the simulated funnels ``{funnel_id: n_sessions}``."""
        self._catalog = Catalog(funnels)

    def funnel_session_ids(self, funnel_id: str) -> list[str]:
        """The ids of a configured funnel's sessions, newest first."""
        return [e.session_id for e in self._catalog.by_funnel.get(funnel_id, [])]

    # -- API -------------------------------------------------------------------------------

    def _record(self, session_id: str, arrived: float, status: int) -> None:
        with self._lock:
            self._total += 1
            if self.record:
                self._requests.setdefault(session_id, []).append((arrived, status))

    async def _get_session(self, request: web.BaseRequest, session_id: str) -> web.StreamResponse:
        # One event loop serves every request, so the count needs no lock.
        self._in_flight += 1
        try:
            return await self._answer_session(request, session_id)
        finally:
            self._in_flight -= 1

    async def _answer_session(
        self, request: web.BaseRequest, session_id: str
    ) -> web.StreamResponse:
        arrived = time.monotonic()
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if request.headers.get("Fox-Secret") != self.secret:
            self._record(session_id, arrived, 401)
            return error_response(401)
        faults = parse_faults(session_id)
        if faults.api.active:
            # Only authenticated requests use up a fault, so a wrong secret cannot hide one.
            with self._lock:
                attempt = self._attempts[session_id] = self._attempts.get(session_id, 0) + 1
            answer = await apply_faults(request, faults.api, attempt)
            if answer is not None:
                self._record(session_id, arrived, answer.status)
                return answer.response
        entry = self._catalog.by_id.get(session_id)
        if entry is None:
            body = session_body(session_id)
        else:
            body = session_body(session_id, entry.funnel_id, entry.index)
        self._record(session_id, arrived, 200)
        if faults.chunked:
            return await _stream(request, body)
        return web.Response(body=body, content_type="text/html" if faults.not_json else _JSON)

    async def _list_sessions(self, request: web.BaseRequest) -> web.StreamResponse:
        arrived = time.monotonic()
        query = request.query
        funnel_id = query.get("filter[funnel_id]")
        profile_id = query.get("filter[profile_id]")
        cursor = query.get("cursor")
        log: dict[str, Any] = {
            "t": arrived,
            "funnel_id": funnel_id,
            "profile_id": profile_id,
            "cursor": cursor,
            "limit": query.get("limit"),
        }
        response = await self._list_page(request, funnel_id, profile_id, cursor)
        log["status"] = response.status
        with self._lock:
            self._total += 1
            if self.record:
                self._list_requests.append(log)
        return response

    async def _list_page(
        self,
        request: web.BaseRequest,
        funnel_id: str | None,
        profile_id: str | None,
        cursor: str | None,
    ) -> web.Response:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if request.headers.get("Fox-Secret") != self.secret:
            return error_response(401)
        try:
            limit = int(request.query.get("limit", "20"))
            page, offset = decode_cursor(cursor) if cursor else (1, 0)
        except ValueError:
            return error_response(400)
        if limit < 1:
            return error_response(400)
        if limit > _MAX_LIMIT:
            # Community clients saw big pages time out; the simulator makes that certain.
            return error_response(408)
        faults = parse_funnel_faults(funnel_id or "")
        if page == 2 and faults.page_error is not None and funnel_id is not None:
            with self._lock:
                attempt = self._page_two[funnel_id] = self._page_two.get(funnel_id, 0) + 1
            if faults.page_error.hits(attempt):
                return error_response(faults.page_error.value)
        entries = self._catalog.select(funnel_id, profile_id)
        end = offset + limit
        next_cursor = encode_cursor(page + 1, end) if end < len(entries) else None
        if faults.repeat_cursor and page == 2:
            next_cursor = cursor
        return web.Response(
            body=_page_body(entries[offset:end], next_cursor, len(entries)),
            content_type=_JSON,
        )

    # -- control API -----------------------------------------------------------------------

    async def _stats(self, request: web.BaseRequest) -> web.Response:
        with self._lock:
            stats = {
                "total": self._total,
                "requests": {sid: list(reqs) for sid, reqs in self._requests.items()},
                "list_requests": list(self._list_requests),
            }
        return web.Response(body=orjson.dumps(stats), content_type=_JSON)

    async def _reset(self, request: web.BaseRequest) -> web.Response:
        self.reset()
        return web.Response(status=204)

    async def _config(self, request: web.BaseRequest) -> web.Response:
        try:
            config = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response(400)
        if not isinstance(config, dict):
            return error_response(400)
        try:
            if "latency_ms" in config:
                self.set_latency(float(config["latency_ms"]))
            if "secret" in config:
                self.set_secret(str(config["secret"]))
            if "funnels" in config:
                self.set_funnels({str(k): int(v) for k, v in config["funnels"].items()})
        except (AttributeError, TypeError, ValueError):
            return error_response(400)
        current = {"latency_ms": self.latency_ms, "funnels": self._catalog.funnels}
        return web.Response(body=orjson.dumps(current), content_type=_JSON)


async def _stream(
    request: web.BaseRequest, body: bytes, chunk: int = 64 * 1024
) -> web.StreamResponse:
    """Send ``body`` chunked (no Content-Length); a client may hang up part way."""
    response = web.StreamResponse(headers={"Content-Type": _JSON})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        for start in range(0, len(body), chunk):
            await response.write(body[start : start + chunk])
        await response.write_eof()
    except ConnectionError:
        pass  # the client stopped reading
    return response


def _page_body(entries: list[FunnelEntry], next_cursor: str | None, total: int) -> bytes:
    # Splices cached item bytes instead of rebuilding and re-encoding every session.
    items = b",".join(list_item_body(e.session_id, e.funnel_id, e.index) for e in entries)
    pagination = orjson.dumps(
        {
            "has_more": next_cursor is not None,
            "next_cursor": next_cursor,
            "total": total,
        }
    )
    return b'{"data":[' + items + b'],"pagination":' + pagination + b"}"


def _funnel_arg(text: str) -> tuple[str, int]:
    funnel_id, _, count = text.rpartition("=")
    if not funnel_id:
        raise argparse.ArgumentTypeError(f"expected FUNNEL_ID=N, got {text!r}")
    return funnel_id, int(count)


def main(argv: list[str] | None = None) -> None:
    """Run the simulator in the foreground until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m workshop.funnelfox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--secret", default=DEFAULT_SECRET)
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    parser.add_argument(
        "--funnel",
        type=_funnel_arg,
        action="append",
        default=[],
        metavar="ID=N",
        help="simulate funnel ID with N sessions (repeatable)",
    )
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="keep counts only, not per-request history (long benchmark runs)",
    )
    args = parser.parse_args(argv)
    sim = FunnelFoxSimulator(
        args.secret,
        args.latency_ms,
        dict(args.funnel),
        args.host,
        args.port,
        prefix=args.prefix,
        record=not args.no_record,
    )

    def ready(port: int) -> None:
        sim.port = port
        print(f"funnelfox simulator listening on {sim.base_url}", flush=True)

    run_foreground(sim.handle, args.host, args.port, ready)


if __name__ == "__main__":
    main()
