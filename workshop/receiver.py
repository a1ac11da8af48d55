"""A downstream webhook receiver that checks Standard Webhooks signatures and records attempts."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from workshop.faults import parse_faults
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

DEMO_WEBHOOK_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
"""The demo's signing secret: fixed so the worker and the receiver agree without setup."""

_SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST the receiver got, and how it answered."""

    webhook_id: str
    webhook_timestamp: str
    session_id: str
    received_at: float
    verified: bool
    status: int
    body: bytes
    body_is_json: bool

    @property
    def accepted(self) -> bool:
        """Whether the receiver answered 2xx, i.e. the delivery counts."""
        return 200 <= self.status < 300

    @property
    def payload(self) -> Any:
        """The body parsed as JSON (None when it was not JSON or bodies are not kept)."""
        return orjson.loads(self.body) if self.body_is_json and self.body else None

    def json_body(self) -> orjson.Fragment | str:
        """The body for ``orjson.dumps``: spliced in as received, or as text when not JSON."""
        if self.body_is_json:
            return orjson.Fragment(self.body)
        return self.body.decode(errors="replace")

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready view of the attempt."""
        return {
            "webhook_id": self.webhook_id,
            "webhook_timestamp": self.webhook_timestamp,
            "session_id": self.session_id,
            "received_at": self.received_at,
            "verified": self.verified,
            "status": self.status,
            "body": self.json_body(),
        }


def session_id_of(payload: Any) -> str:
    """The session id inside a delivered payload (``data.session.id``), or ""."""
    if not isinstance(payload, dict):
        return ""
    data = payload.get("data")
    session = data.get("session") if isinstance(data, dict) else None
    if isinstance(session, dict) and isinstance(session.get("id"), str):
        return str(session["id"])
    # Older or foreign payload shapes carry the id flat.
    for holder in (data, payload):
        if isinstance(holder, dict) and isinstance(holder.get("session_id"), str):
            return str(holder["session_id"])
    return ""


class WebhookReceiver(BackgroundServer):
    """The fake downstream; ``start()`` serves it in a background thread."""

    thread_name = "webhook-receiver"

    def __init__(
        self,
        secret: str = DEMO_WEBHOOK_SECRET,
        latency_ms: float = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep_bodies: bool = True,
        on_attempt: Callable[[Attempt], None] | None = None,
    ) -> None:
        self.latency_ms = latency_ms
        self.host = host
        self.port = port
        # Off for long benchmark runs: bodies are most of the memory an attempt holds.
        self.keep_bodies = keep_bodies
        self.on_attempt = on_attempt
        self._webhook = Webhook(secret)
        self._cond = threading.Condition()
        self._attempts: list[Attempt] = []
        self._accepted = 0
        self._distinct: set[str] = set()
        self._counts: dict[str, int] = {}
        self.outage_status: int | None = None
        # Set (and dropped) on every accepted delivery to wake HTTP long-polls on the loop.
        self._tick: asyncio.Event | None = None
        self._routes: dict[Route, Handler] = {
            ("GET", "/_recv/deliveries"): self._get_deliveries,
            ("GET", "/_recv/attempts"): self._get_attempts,
            ("POST", "/_recv/reset"): self._post_reset,
            ("GET", "/_recv/wait"): self._get_wait,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The webhook URL to configure in the sender."""
        return f"http://{display_host(self.host)}:{self.port}/hook"

    @property
    def address(self) -> str:
        """The hook URL."""
        return self.url

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one HTTP request (``POST /hook…`` and the ``/_recv`` control routes)."""
        path = request.path
        if path == "/hook" or path.startswith("/hook/"):
            if request.method != "POST":
                return error_response(405)
            return await self._hook(request)
        return await dispatch(self._routes, request)

    # -- thread-safe accessors ---------------------------------------------------------------

    def set_secret(self, secret: str) -> None:
        """Verify signatures with ``secret`` from now on."""
        self._webhook = Webhook(secret)

    def set_latency(self, latency_ms: float) -> None:
        """Delay every answer by ``latency_ms``."""
        self.latency_ms = latency_ms

    def set_outage(self, status: int | None) -> None:
        """Answer every delivery with ``status`` (e.g. 503) until called with None."""
        self.outage_status = status

    def attempts(self) -> list[Attempt]:
        """Every POST received, in arrival order."""
        with self._cond:
            return list(self._attempts)

    def deliveries(self) -> list[Attempt]:
        """The attempts answered 2xx (duplicates included: delivery is at least once)."""
        with self._cond:
            return [a for a in self._attempts if a.accepted]

    def attempts_for(self, session_id: str) -> list[Attempt]:
        """The attempts whose payload names ``session_id``."""
        with self._cond:
            return [a for a in self._attempts if a.session_id == session_id]

    def accepted_count(self, *, distinct: bool = False) -> int:
        """How many deliveries were accepted; ``distinct`` counts each webhook-id once."""
        with self._cond:
            return len(self._distinct) if distinct else self._accepted

    def wait_for(self, count: int, timeout: float, *, distinct: bool = False) -> bool:
        """Block until ``count`` deliveries were accepted; False if ``timeout`` s passed first."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (len(self._distinct) if distinct else self._accepted) >= count, timeout
            )

    def reset(self) -> None:
        """Forget every attempt and fault counter."""
        with self._cond:
            self._attempts.clear()
            self._accepted = 0
            self._distinct.clear()
            self._counts.clear()

    # -- the hook ----------------------------------------------------------------------------

    def _verify(self, body: bytes, request: web.BaseRequest) -> bool:
        headers = {name: request.headers.get(name, "") for name in _SIGNATURE_HEADERS}
        try:
            self._webhook.verify(body, headers, json_parse=False)
        except (WebhookVerificationError, ValueError):  # ValueError: malformed base64 or header
            return False
        return True

    async def _hook(self, request: web.BaseRequest) -> web.StreamResponse:
        received_at = time.monotonic()
        body = await request.read()
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        verified = self._verify(body, request)
        try:
            payload, is_json = orjson.loads(body), True
        except orjson.JSONDecodeError:
            payload, is_json = None, False
        session_id = session_id_of(payload)
        response: web.StreamResponse | None = None
        status = 204
        faults = parse_faults(session_id).hook
        if not verified:
            status, response = 400, error_response(400)
        elif self.outage_status is not None:
            status, response = self.outage_status, error_response(self.outage_status)
        elif faults.active:
            # Only verified deliveries use up a fault, as only they would reach a real handler.
            with self._cond:
                attempt = self._counts[session_id] = self._counts.get(session_id, 0) + 1
            answer = await apply_faults(request, faults, attempt)
            if answer is not None:
                status, response = answer
        self._record(
            Attempt(
                webhook_id=request.headers.get("webhook-id", ""),
                webhook_timestamp=request.headers.get("webhook-timestamp", ""),
                session_id=session_id,
                received_at=received_at,
                verified=verified,
                status=status,
                body=body if self.keep_bodies else b"",
                body_is_json=is_json and self.keep_bodies,
            )
        )
        return response if response is not None else web.Response(status=204)

    def _record(self, attempt: Attempt) -> None:
        with self._cond:
            self._attempts.append(attempt)
            if attempt.accepted:
                self._accepted += 1
                self._distinct.add(attempt.webhook_id)
                self._cond.notify_all()
        if attempt.accepted and self._tick is not None:
            self._tick.set()
            self._tick = None
        if self.on_attempt is not None:
            self.on_attempt(attempt)

    # -- control API -----------------------------------------------------------------------

    async def _get_deliveries(self, request: web.BaseRequest) -> web.Response:
        rows = [
            {"webhook_id": a.webhook_id, "session_id": a.session_id, "body": a.json_body()}
            for a in self.deliveries()
        ]
        return web.Response(body=orjson.dumps(rows), content_type=_JSON)

    async def _get_attempts(self, request: web.BaseRequest) -> web.Response:
        session_id = request.query.get("session_id")
        chosen = self.attempts() if session_id is None else self.attempts_for(session_id)
        return web.Response(body=orjson.dumps([a.as_json() for a in chosen]), content_type=_JSON)

    async def _post_reset(self, request: web.BaseRequest) -> web.Response:
        self.reset()
        return web.Response(status=204)

    async def _get_wait(self, request: web.BaseRequest) -> web.Response:
        try:
            count = int(request.query.get("count", "1"))
            timeout = float(request.query.get("timeout", "30"))
        except ValueError:
            return error_response(400)
        distinct = request.query.get("distinct", "") in ("1", "true")
        deadline = time.monotonic() + timeout
        while (current := self.accepted_count(distinct=distinct)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._tick is None:
                self._tick = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tick.wait(), remaining)
        body = {"count": current, "reached": current >= count}
        return web.Response(body=orjson.dumps(body), content_type=_JSON)


def _print_attempt(attempt: Attempt) -> None:
    print(
        f"{attempt.status} session={attempt.session_id or '-'} "
        f"webhook-id={attempt.webhook_id or '-'} verified={attempt.verified}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Run the receiver in the foreground until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m workshop.receiver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--secret", default=DEMO_WEBHOOK_SECRET)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--quiet", action="store_true", help="no line per attempt")
    parser.add_argument(
        "--no-bodies", action="store_true", help="do not keep bodies (long benchmark runs)"
    )
    args = parser.parse_args(argv)
    receiver = WebhookReceiver(
        args.secret,
        args.latency_ms,
        args.host,
        args.port,
        keep_bodies=not args.no_bodies,
        on_attempt=None if args.quiet else _print_attempt,
    )

    def ready(port: int) -> None:
        receiver.port = port
        print(f"webhook receiver listening on {receiver.url}", flush=True)

    run_foreground(receiver.handle, args.host, args.port, ready)


if __name__ == "__main__":
    main()
