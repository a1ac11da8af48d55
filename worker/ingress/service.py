"""The ingress app: FunnelFox webhooks become tasks, answered only once queued.

Order of checks on ``POST /webhooks/funnelfox``, cheapest and least revealing first:
secret (401) → size (413) → JSON (400) → envelope (422) → event type / sandbox (200 ignored)
→ session id (422) → dedupe marker (200 duplicate) → publish (202, or 503 when the broker fails).
Events accepted within INGRESS_BATCH_WINDOW_MS of one another are published as one message
(``worker.ingress.coalesce``); each is answered once that message is in the broker.
With REDIS_WAIT_REPLICAS, a 202 or 200 duplicate is sent only once that many replicas hold the
event's task, so a failover to one of them cannot lose an acknowledged event (else 503).

A conversion (a purchase or subscription event, ``worker.conversions``) needs no session id:
its session is looked for in the envelope, ``data`` and ``profile``, and it is queued as its
own unit, keyed by its event id, whatever is found (a malformed id included: it is delivered
with ``session_error``, never refused).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import orjson
import redis
import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from config.ingress import IngressConfig
from worker.conversions import Conversion, conversion_of, is_conversion
from worker.errors import InvalidSessionId
from worker.ids import check_session_id
from worker.ingress.body import BadContentLength, BodyTooLarge, read_limited
from worker.ingress.coalesce import Coalescer
from worker.ingress.events import Event, parse_event, problems
from worker.ingress.markers import Claim, EventMarkers
from worker.ingress.openapi import openapi_document
from worker.keys import LEDGER_IDLE, ledger_key
from worker.ledger import UNFINISHED
from worker.metrics import render as render_metrics
from worker.producer import POOL_SIZE, Producer, Publisher
from worker.redis_clients import (
    async_fail_fast_client,
    primary_id,
    sync_client,
    wait_for_replicas,
)
from worker.work import Work

log = logging.getLogger("worker.ingress")

WEBHOOK_PATH = "/webhooks/funnelfox"
SECRET_HEADERS = (b"fox-secret-key", b"fox-secret")
_SESSION_ID_RULE = "session_id must be 1 to 128 characters of A-Z, a-z, 0-9, '_' and '-'"


def _error(
    status: int,
    error: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(
        {"error": error, "message": message, **extra}, status_code=status, headers=headers
    )


class Ingress:
    """The routes' shared state: configuration, a Redis client and the task publisher."""

    def __init__(self, config: IngressConfig, publisher: Publisher | None = None) -> None:
        self.config = config
        self._secret = config.secret.get_secret_value().encode()
        self._publisher = publisher
        self._redis: aioredis.Redis | None = None
        self._sync_redis: redis.Redis | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._coalescer: Coalescer[Work] | None = None
        self._document = orjson.dumps(openapi_document())

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Open the clients on the server's loop; close them on shutdown."""
        self._redis = async_fail_fast_client(self.config.redis_url, self.config.broker_timeout_s)
        # Bounds the threads blocked on the broker, and so its pooled connections.
        self._limiter = anyio.CapacityLimiter(POOL_SIZE)
        if self._publisher is None:
            self._publisher = Producer.connect(
                self.config.redis_url, timeout_s=self.config.broker_timeout_s
            )
        self._coalescer = Coalescer(
            self._publisher.publish_many,
            window_s=self.config.batch_window_ms / 1000,
            max_batch=self.config.batch_max,
            limiter=self._limiter,
        )
        log.info(
            "ingress ready: event types %s, sandbox %s",
            ",".join(sorted(self.config.event_types)),
            "accepted" if self.config.accept_sandbox else "ignored",
        )
        try:
            yield
        finally:
            # Events still gathered are published, each answered, before the clients close.
            await self._coalescer.aclose()
            await self._redis.aclose()
            self._publisher.close()
            if self._sync_redis is not None:
                self._sync_redis.close()

    def routes(self) -> list[Route]:
        """Every route of the app."""
        return [
            Route(WEBHOOK_PATH, self.webhook, methods=["POST"]),
            # The same route, not a redirect to it: a 307 would answer before the secret is
            # checked (see create_app, which turns redirects off everywhere).
            Route(WEBHOOK_PATH + "/", self.webhook, methods=["POST"], include_in_schema=False),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]

    # -- routes -------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        """The process is alive."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Redis (the broker) answers a PING."""
        try:
            await self._markers_redis().ping()
        except Exception as exc:
            log.warning("readiness check failed: %s", type(exc).__name__)
            return _error(503, "redis_unavailable", "Redis did not answer PING")
        return JSONResponse({"status": "ready"})

    async def metrics(self, request: Request) -> Response:
        """The fleet's pipeline metrics (kept in Redis by every worker) for Prometheus."""
        try:
            body = await anyio.to_thread.run_sync(render_metrics, self._metrics_redis())
        except redis.RedisError as exc:
            log.warning("metrics unavailable: %s", type(exc).__name__)
            return _error(503, "redis_unavailable", "Redis did not answer")
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def _metrics_redis(self) -> redis.Redis:
        if self._sync_redis is None:
            timeout = max(1.0, self.config.broker_timeout_s)
            self._sync_redis = sync_client(
                self.config.redis_url, timeout_s=timeout, connect_timeout_s=timeout
            )
        return self._sync_redis

    async def openapi(self, request: Request) -> Response:
        """This app's OpenAPI document."""
        return Response(self._document, media_type="application/json")

    async def webhook(self, request: Request) -> Response:
        """Take one FunnelFox event; answer once its task is in the broker."""
        if not self._authenticated(request):
            return _error(
                401, "unauthorized", "missing or wrong secret in Fox-Secret-Key (or Fox-Secret)"
            )
        try:
            body = await read_limited(request, self.config.max_body_bytes)
        except BodyTooLarge as exc:
            return _error(413, "payload_too_large", str(exc))
        except BadContentLength:
            return _error(400, "bad_request", "Content-Length is not a number")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "malformed_json", "the body is not valid JSON")
        try:
            event, envelope_session_id = parse_event(document)
        except ValidationError as exc:
            return _error(
                422, "invalid_event", "the body is not a FunnelFox event", problems=problems(exc)
            )
        return await self._accept(event, envelope_session_id)

    # -- steps --------------------------------------------------------------------------------

    def _authenticated(self, request: Request) -> bool:
        # Raw header bytes: no decoding step can make two different secrets compare equal.
        ok = False
        for name, value in request.scope["headers"]:
            if name in SECRET_HEADERS:
                ok |= hmac.compare_digest(value, self._secret)
        return ok

    async def _accept(self, event: Event, envelope_session_id: Any) -> Response:
        ids = {"event_id": event.id, "type": event.type}
        if event.type not in self.config.event_types:
            return JSONResponse(
                {"status": "ignored", "reason": "event type not handled", **ids}, status_code=200
            )
        if event.is_sandbox and not self.config.accept_sandbox:
            return JSONResponse(
                {"status": "ignored", "reason": "sandbox events are off", **ids}, status_code=200
            )
        if is_conversion(event.type):
            conversion = conversion_of(event.type, envelope_session_id, event.model_extra or {})
            return await self._enqueue(event, conversion.session_id, ids, conversion)
        if event.session_id is None:
            return _error(
                422,
                "invalid_event",
                f"{event.type} events need a session_id",
                problems=[{"loc": ["session_id"], "msg": "Field required", "type": "missing"}],
            )
        try:
            session_id = check_session_id(event.session_id)
        except InvalidSessionId:
            # A fixed message: the id is not repeated back, whatever was pasted into it.
            return _error(
                422,
                "invalid_session_id",
                _SESSION_ID_RULE,
                problems=[{"loc": ["session_id"], "msg": _SESSION_ID_RULE, "type": "invalid_id"}],
            )
        return await self._enqueue(event, session_id, ids)

    async def _enqueue(
        self,
        event: Event,
        session_id: str | None,
        ids: dict[str, str],
        conversion: Conversion | None = None,
    ) -> Response:
        markers = EventMarkers(self._markers_redis(), dedupe_ttl_s=self.config.dedupe_ttl_s)
        context = {"session_id": session_id or ""}
        # The ledger's unit: the session, or a conversion's event.
        unit_id = event.id if conversion is not None else session_id or event.id
        try:
            # Which primary takes this event's writes, so the wait for replicas can tell.
            primary = await primary_id(self._markers_redis()) if self.config.wait_replicas else ""
            claim = await markers.claim(event.id)
        except Exception as exc:
            log.warning(
                "event %s not taken: Redis failed (%s)",
                event.id,
                type(exc).__name__,
                extra=context,
            )
            return self._unavailable()
        if claim is Claim.DUPLICATE and not await self._lost(unit_id):
            # Its first copy may have been acknowledged unreplicated (and answered 503).
            if not await self._replicated(event.id, primary, context):
                return self._not_replicated()
            log.info("event %s is a duplicate; acknowledged", event.id, extra=context)
            return JSONResponse({"status": "duplicate", "session_id": session_id, **ids})
        if claim is Claim.IN_PROGRESS:
            # Acknowledging now could lose the event if that other publish fails: ask again.
            return _error(
                409,
                "in_progress",
                "this event is being enqueued by another request; retry later",
                headers={"Retry-After": "5"},
            )
        try:
            # Shared with the events accepted beside it: one message, published from a thread.
            await self._batches().submit(Work(unit_id, trigger=event.trigger(), event=conversion))
        except Exception as exc:
            log.warning(
                "event %s not enqueued: broker failed (%s)",
                event.id,
                type(exc).__name__,
                extra=context,
            )
            try:
                await markers.release(event.id)
            except Exception:
                # The marker then expires after PENDING_TTL_S; FunnelFox retries later than that.
                log.warning("event %s: marker not released", event.id, extra=context)
            return self._unavailable()
        try:
            await markers.confirm(event.id)
        except Exception as exc:
            # The task is queued, which is what matters; a later duplicate may be queued again
            # and the delivery records keep it from being delivered twice.
            log.warning(
                "event %s: marker not confirmed (%s)", event.id, type(exc).__name__, extra=context
            )
        if not await self._replicated(event.id, primary, context):
            # The task is queued and its marker confirmed: FunnelFox's retry is answered
            # "duplicate" once a replica has both, or queues it again if a failover lost them.
            return self._not_replicated()
        log.info("event %s enqueued", event.id, extra=context)
        return JSONResponse(
            {"status": "enqueued", "session_id": session_id, **ids}, status_code=202
        )

    async def _lost(self, unit_id: str) -> bool:
        """Whether a session whose event was already enqueued needs publishing again.

        FunnelFox redelivers an event when it did not hear back; if the ledger has no entry
        for the session (Redis lost it) or holds it unfinished with no progress for
        RECONCILE_AFTER_S, publishing it again is right, and harmless if it was not lost.
        """
        client = self._markers_redis()
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hget(ledger_key(unit_id), "st")
                pipe.zscore(LEDGER_IDLE, unit_id)
                state, expected_by = await pipe.execute()
        except Exception:
            return False  # the duplicate answer stands; the reconciler still watches it
        if state is None:
            return True
        overdue = time.time() - self.config.reconcile_after_s
        return state.decode() in UNFINISHED and expected_by is not None and expected_by < overdue

    async def _replicated(self, event_id: str, primary: str, context: dict[str, str]) -> bool:
        """Whether REDIS_WAIT_REPLICAS replicas of ``primary`` hold every write so far (True
        when it is 0)."""
        wanted = self.config.wait_replicas
        if not wanted:
            return True
        try:
            got = await wait_for_replicas(
                self._markers_redis(), wanted, self.config.wait_timeout_s, primary=primary
            )
        except Exception as exc:
            got = 0
            problem = type(exc).__name__
        else:
            problem = f"{got} of {wanted} replica(s) within {self.config.wait_timeout_s:g} s"
        if got >= wanted:
            return True
        log.warning("event %s not acknowledged: %s", event_id, problem, extra=context)
        return False

    def _batches(self) -> Coalescer[Work]:
        assert self._coalescer is not None, "set in lifespan"
        return self._coalescer

    def _markers_redis(self) -> aioredis.Redis:
        assert self._redis is not None, "set in lifespan"
        return self._redis

    @staticmethod
    def _not_replicated() -> Response:
        return JSONResponse(
            {
                "error": "not_replicated",
                "message": "the event is queued but no standby confirmed it in time; retry",
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @staticmethod
    def _unavailable() -> Response:
        return JSONResponse(
            {"error": "broker_unavailable", "message": "the event could not be queued; retry"},
            status_code=503,
            headers={"Retry-After": "5"},
        )


def create_app(config: IngressConfig, *, publisher: Publisher | None = None) -> Starlette:
    """The ASGI app for ``config``; ``publisher`` replaces the Celery one in tests."""
    ingress = Ingress(config, publisher)
    app = Starlette(routes=ingress.routes(), lifespan=ingress.lifespan)
    app.router.redirect_slashes = False
    app.state.ingress = ingress
    return app
