"""The ingress app on a real uvicorn server and a real Redis: every answer, and what it queued."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
import uvicorn
from conftest import FOX_SECRET
from pydantic import SecretStr
from starlette.applications import Starlette

from config import ConfigError
from config.ingress import IngressConfig, load_config
from worker.conversions import CONVERSION_TYPES
from worker.ingress.markers import PENDING_TTL_S
from worker.ingress.openapi import PUBLISHED, openapi_document, render
from worker.ingress.service import create_app
from worker.keys import event_key, ledger_conversions_key, ledger_key
from worker.producer import BATCH_TASK_NAME, QUEUE
from worker.redis_clients import async_fail_fast_client
from worker.work import Work

WEBHOOK = "/webhooks/funnelfox"
AUTH = {"Fox-Secret-Key": FOX_SECRET}


def event(**changes: Any) -> dict[str, Any]:
    """An onboarding.completed envelope as FunnelFox's webhook docs show it, abridged."""
    body: dict[str, Any] = {
        "id": "evt_01HZX3P7Q0V1M2N3B4C5D6E7F8",
        "type": "onboarding.completed",
        "created_at": 1716672462,
        "is_sandbox": False,
        "project_id": "01HZX3P7Q0V1M2N3B4C5D6E7PR",
        "funnel_id": "01HZX3P7Q0V1M2N3B4C5D6E7FN",
        "profile_id": "pro_01HZX3P7Q0V1M2N3B4C5D6E7PF",
        "session_id": "ses_01HZX3P7Q0V1M2N3B4C5D6E7SS",
        "location": {"funnel_id": "01HZX3P7Q0V1M2N3B4C5D6E7FN", "funnel_version": 3},
        "profile": {"id": "pro_01HZX3P7Q0V1M2N3B4C5D6E7PF", "country": "GB"},
        "data": {"replies": []},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def queued(client: redis.Redis) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """(task name, args, kwargs) of every message waiting in the enrich queue, oldest first."""
    messages = []
    for raw in reversed(client.lrange(QUEUE, 0, -1)):
        message = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        messages.append((message["headers"]["task"], args, kwargs))
    return messages


def queued_ids(client: redis.Redis) -> list[str]:
    """The session ids of every message waiting in the enrich queue, oldest first."""
    ids: list[str] = []
    for task, args, _ in queued(client):
        ids += [item["id"] for item in args[0]] if task == BATCH_TASK_NAME else [args[0]]
    return ids


def nothing_queued(client: redis.Redis) -> bool:
    """No task in the queue and no event marker left behind."""
    return client.llen(QUEUE) == 0 and not client.keys("ffe:event:*")


class LiveServer:
    """An ASGI app on uvicorn in a thread, on a socket bound before it starts (no port race)."""

    def __init__(self, app: Starlette) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, args=([self.sock],), daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


class FailingPublisher:
    """A broker that refuses every task while Redis itself is up."""

    def __init__(self) -> None:
        self.calls = 0
        self.batches: list[list[str]] = []  # the unit ids of each publish_many

    def publish_many(self, works: list[Work]) -> None:
        self.calls += 1
        self.batches.append([w.session_id for w in works])
        raise ConnectionError("broker refused the connection")

    def close(self) -> None:
        pass


@pytest.fixture
def config(redis_url: str) -> IngressConfig:
    return IngressConfig(secret=SecretStr(FOX_SECRET), redis_url=redis_url, broker_timeout_s=0.5)


@pytest.fixture
def serve() -> Iterator[Callable[..., httpx.Client]]:
    """Start the app for a config; the client's base URL is the live server."""
    stack: list[tuple[LiveServer, httpx.Client]] = []

    def start(config: IngressConfig, **kwargs: Any) -> httpx.Client:
        server = LiveServer(create_app(config, **kwargs)).__enter__()
        client = httpx.Client(base_url=server.url, timeout=5)
        stack.append((server, client))
        return client

    yield start
    for server, client in reversed(stack):
        client.close()
        server.__exit__()


@pytest.fixture
def client(serve: Callable[..., httpx.Client], config: IngressConfig) -> httpx.Client:
    return serve(config)


# -- the happy path ----------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Fox-Secret-Key", "Fox-Secret"])
def test_an_event_is_queued_with_its_trigger(
    client: httpx.Client, redis_client: redis.Redis, header: str
) -> None:
    response = client.post(WEBHOOK, json=event(), headers={header: FOX_SECRET})

    assert response.status_code == 202
    assert response.json() == {
        "status": "enqueued",
        "session_id": "ses_01HZX3P7Q0V1M2N3B4C5D6E7SS",
        "event_id": "evt_01HZX3P7Q0V1M2N3B4C5D6E7F8",
        "type": "onboarding.completed",
    }
    [(task, [[item]], kwargs)] = queued(redis_client)
    assert (task, kwargs) == (BATCH_TASK_NAME, {})
    assert abs(item.pop("first_seen_at") - time.time()) < 60
    assert item == {
        "id": "ses_01HZX3P7Q0V1M2N3B4C5D6E7SS",
        "trigger": {
            "event_id": "evt_01HZX3P7Q0V1M2N3B4C5D6E7F8",
            "type": "onboarding.completed",
            "created_at": 1716672462,
            "is_sandbox": False,
            "project_id": "01HZX3P7Q0V1M2N3B4C5D6E7PR",
            "funnel_id": "01HZX3P7Q0V1M2N3B4C5D6E7FN",
            "profile_id": "pro_01HZX3P7Q0V1M2N3B4C5D6E7PF",
        },
    }


def test_optional_context_may_be_missing(client: httpx.Client, redis_client: redis.Redis) -> None:
    body = {"id": "evt_min", "type": "onboarding.completed", "session_id": "ses_min"}

    assert client.post(WEBHOOK, json=body, headers=AUTH).status_code == 202
    [(_, [[item]], _)] = queued(redis_client)
    assert item["id"] == "ses_min"
    assert item["trigger"] == {
        "event_id": "evt_min",
        "type": "onboarding.completed",
        "created_at": None,
        "is_sandbox": None,
        "project_id": None,
        "funnel_id": None,
        "profile_id": None,
    }


def test_a_duplicate_is_acknowledged_and_queued_once(
    client: httpx.Client, redis_client: redis.Redis, config: IngressConfig
) -> None:
    first = client.post(WEBHOOK, json=event(), headers=AUTH)
    again = client.post(WEBHOOK, json=event(), headers={"Fox-Secret": FOX_SECRET})

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert len(queued(redis_client)) == 1
    ttl = redis_client.ttl(event_key("evt_01HZX3P7Q0V1M2N3B4C5D6E7F8"))
    assert config.dedupe_ttl_s - 60 < ttl <= config.dedupe_ttl_s


def test_a_redelivered_event_whose_session_the_ledger_lost_is_published_again(
    client: httpx.Client, redis_client: redis.Redis
) -> None:
    first = client.post(WEBHOOK, json=event(), headers=AUTH)
    assert first.status_code == 202
    session_id = event()["session_id"]
    redis_client.delete(f"ffe:ledger:{session_id}")  # Redis lost it (or never had it)

    again = client.post(WEBHOOK, json=event(), headers=AUTH)

    assert again.status_code == 202
    assert again.json()["status"] == "enqueued"
    assert len(queued(redis_client)) == 2
    assert redis_client.hget(f"ffe:ledger:{session_id}", "st") == b"queued"
    # In flight (recent progress) or finished: a duplicate as before.
    assert client.post(WEBHOOK, json=event(), headers=AUTH).json()["status"] == "duplicate"
    redis_client.zadd("ffe:ledger:idle", {session_id: time.time() - 3600})  # stalled an hour
    assert client.post(WEBHOOK, json=event(), headers=AUTH).status_code == 202
    redis_client.hset(f"ffe:ledger:{session_id}", "st", "delivered")
    assert client.post(WEBHOOK, json=event(), headers=AUTH).json()["status"] == "duplicate"
    assert len(queued(redis_client)) == 3


def test_concurrent_duplicates_are_queued_once(
    client: httpx.Client, redis_client: redis.Redis
) -> None:
    with ThreadPoolExecutor(16) as pool:
        statuses = list(
            pool.map(
                lambda _: client.post(WEBHOOK, json=event(), headers=AUTH).status_code, range(32)
            )
        )

    # One request queues it; the rest see it queued (200) or being queued (409: FunnelFox retries).
    assert statuses.count(202) == 1
    assert set(statuses) <= {200, 202, 409}
    assert len(queued(redis_client)) == 1


def test_distinct_events_for_one_session_are_each_queued(
    client: httpx.Client, redis_client: redis.Redis
) -> None:
    # Dedupe is per event; the delivery records keep the session from being delivered twice.
    for event_id in ("evt_a", "evt_b"):
        assert client.post(WEBHOOK, json=event(id=event_id), headers=AUTH).status_code == 202
    assert len(queued(redis_client)) == 2


# -- coalescing: events accepted together share one message ---------------------------------------


def post_together(client: httpx.Client, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """POST every body at once, one thread each; the answers in the bodies' order."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: client.post(WEBHOOK, json=body, headers=AUTH), bodies))


def sessions(count: int) -> list[dict[str, Any]]:
    return [event(id=f"evt_co{n:02d}", session_id=f"ses_co{n:02d}") for n in range(count)]


def test_events_posted_together_are_queued_in_fewer_messages(
    serve: Callable[..., httpx.Client], config: IngressConfig, redis_client: redis.Redis
) -> None:
    types = frozenset({"onboarding.completed", *CONVERSION_TYPES})
    # A window wide enough that a loaded machine still lands several events in each.
    client = serve(replace(config, event_types=types, batch_window_ms=100, batch_max=8))
    bodies = [*sessions(19), conversion()]  # a conversion rides with the sessions
    units = [b.get("session_id", b["id"]) for b in bodies]

    answers = post_together(client, bodies)

    assert [a.status_code for a in answers] == [202] * 20
    messages = queued(redis_client)
    assert len(messages) < 20
    assert {task for task, _, _ in messages} == {BATCH_TASK_NAME}
    assert all(len(items) <= 8 for _, [items], _ in messages)
    items = {item["id"]: item for _, [batch], _ in messages for item in batch}
    assert sorted(items) == sorted(units)
    assert items[bodies[-1]["id"]]["event"]["type"] == "subscription.active"
    for body, unit in zip(bodies, units, strict=True):
        assert items[unit]["trigger"]["event_id"] == body["id"]
        entry = redis_client.hgetall(ledger_key(unit))
        assert (entry[b"st"], entry[b"s"]) == (b"queued", b"ingress")
        assert redis_client.get(event_key(body["id"])) == b"enqueued"


def test_window_zero_queues_each_event_in_a_message_of_its_own(
    serve: Callable[..., httpx.Client], config: IngressConfig, redis_client: redis.Redis
) -> None:
    client = serve(replace(config, batch_window_ms=0))

    answers = post_together(client, sessions(10))

    assert [a.status_code for a in answers] == [202] * 10
    assert sorted(len(items) for _, [items], _ in queued(redis_client)) == [1] * 10


def test_a_batch_the_broker_refuses_gives_every_event_back(
    serve: Callable[..., httpx.Client], config: IngressConfig, redis_client: redis.Redis
) -> None:
    broken = FailingPublisher()
    failing = serve(replace(config, batch_window_ms=100), publisher=broken)
    bodies = sessions(8)

    answers = post_together(failing, bodies)

    assert [a.status_code for a in answers] == [503] * 8
    assert {a.json()["error"] for a in answers} == {"broker_unavailable"}
    assert all(a.headers["retry-after"] for a in answers)
    assert len(broken.batches) < 8  # shared batches, each failing all of its events
    assert sorted(u for batch in broken.batches for u in batch) == [b["session_id"] for b in bodies]
    # Every marker is gone, so FunnelFox's next delivery of each is taken, not a duplicate.
    assert nothing_queued(redis_client)
    working = serve(config)
    assert [a.status_code for a in post_together(working, bodies)] == [202] * 8


# -- conversions: purchase and subscription events, each its own unit ----------------------------

SUBSCRIPTION_DATA = {
    "entitlement": "premium",
    "expires_at": 1767225600,
    "session_id": "ses_01HZX3P7Q0V1M2N3B4C5D6E7DA",
    "vendor": "stripe",
    "vendor_subscription_id": "sub_1",
}


def conversion(**changes: Any) -> dict[str, Any]:
    """A subscription.active envelope: no session_id of its own, one in data and profile."""
    body = event(
        id="evt_01HZX3P7Q0V1M2N3B4C5D6E7SA",
        type="subscription.active",
        session_id=...,
        data=SUBSCRIPTION_DATA,
        profile={"id": "pro_1", "session_id": "ses_01HZX3P7Q0V1M2N3B4C5D6E7PR"},
    )
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


@pytest.fixture
def conversions(serve: Callable[..., httpx.Client], config: IngressConfig) -> httpx.Client:
    types = frozenset({"onboarding.completed", *CONVERSION_TYPES})
    return serve(replace(config, event_types=types))


def test_a_conversion_is_queued_as_its_own_unit_with_its_event(
    conversions: httpx.Client, redis_client: redis.Redis
) -> None:
    response = conversions.post(WEBHOOK, json=conversion(), headers=AUTH)

    assert response.status_code == 202
    assert response.json() == {
        "status": "enqueued",
        "session_id": "ses_01HZX3P7Q0V1M2N3B4C5D6E7DA",  # data.session_id before profile's
        "event_id": "evt_01HZX3P7Q0V1M2N3B4C5D6E7SA",
        "type": "subscription.active",
    }
    [(task, [[item]], kwargs)] = queued(redis_client)
    assert (task, kwargs) == (BATCH_TASK_NAME, {})
    assert item["id"] == "evt_01HZX3P7Q0V1M2N3B4C5D6E7SA"
    assert item["event"] == {
        "type": "subscription.active",
        "data": SUBSCRIPTION_DATA,
        "session_id": "ses_01HZX3P7Q0V1M2N3B4C5D6E7DA",
    }
    assert item["trigger"]["event_id"] == "evt_01HZX3P7Q0V1M2N3B4C5D6E7SA"
    assert item["trigger"]["type"] == "subscription.active"
    entry = redis_client.hgetall(ledger_key("evt_01HZX3P7Q0V1M2N3B4C5D6E7SA"))
    assert (entry[b"st"], entry[b"k"], entry[b"s"]) == (
        b"queued",
        b"subscription.active",
        b"ingress",
    )
    listed = redis_client.zrange(ledger_conversions_key("ses_01HZX3P7Q0V1M2N3B4C5D6E7DA"), 0, -1)
    assert listed == [b"evt_01HZX3P7Q0V1M2N3B4C5D6E7SA"]


@pytest.mark.parametrize(
    ("changes", "session_id", "error"),
    [
        ({"session_id": "ses_ENVELOPE"}, "ses_ENVELOPE", None),
        ({"data": {"price": 999}}, "ses_01HZX3P7Q0V1M2N3B4C5D6E7PR", None),
        ({"data": {"price": 999}, "profile": ...}, None, "no_session_id"),
        ({"data": ..., "profile": ...}, None, "no_session_id"),
        ({"data": {"session_id": "a/b"}}, None, "invalid_session_id"),
        # The envelope's own session_id is read the same way, never refused as a session
        # event's is: empty or null is absent, anything that breaks the id rules is invalid.
        ({"session_id": ""}, "ses_01HZX3P7Q0V1M2N3B4C5D6E7DA", None),
        ({"session_id": "", "data": {"price": 999}}, "ses_01HZX3P7Q0V1M2N3B4C5D6E7PR", None),
        ({"session_id": None}, "ses_01HZX3P7Q0V1M2N3B4C5D6E7DA", None),
        ({"session_id": "", "data": ..., "profile": ...}, None, "no_session_id"),
        ({"session_id": "a/b"}, None, "invalid_session_id"),
        ({"session_id": "s" * 129}, None, "invalid_session_id"),
        ({"session_id": 12}, None, "invalid_session_id"),
        ({"session_id": ["ses_x"]}, None, "invalid_session_id"),
    ],
)
def test_a_conversion_is_queued_whatever_session_it_names(
    conversions: httpx.Client,
    redis_client: redis.Redis,
    changes: dict[str, Any],
    session_id: str | None,
    error: str | None,
) -> None:
    body = conversion(type="purchase.completed", **changes)
    response = conversions.post(WEBHOOK, json=body, headers=AUTH)

    assert response.status_code == 202
    assert response.json()["session_id"] == session_id
    [(_, [[item]], _)] = queued(redis_client)
    assert item["event"].get("session_id") == session_id
    assert item["event"].get("session_error") == error
    assert item["event"]["data"] == body.get("data")


@pytest.mark.parametrize("session_id", ["", "a/b", 12, None])
def test_a_session_event_beside_conversions_is_still_refused_for_its_session_id(
    conversions: httpx.Client, redis_client: redis.Redis, session_id: object
) -> None:
    response = conversions.post(WEBHOOK, json=event(session_id=session_id), headers=AUTH)

    assert response.status_code == 422
    assert nothing_queued(redis_client)


def test_a_conversion_is_deduplicated_by_its_event_id(
    conversions: httpx.Client, redis_client: redis.Redis
) -> None:
    first = conversions.post(WEBHOOK, json=conversion(), headers=AUTH)
    again = conversions.post(WEBHOOK, json=conversion(), headers=AUTH)
    other = conversions.post(WEBHOOK, json=conversion(id="evt_other"), headers=AUTH)

    assert [first.status_code, again.status_code, other.status_code] == [202, 200, 202]
    assert again.json()["status"] == "duplicate"
    assert [item["id"] for _, [[item]], _ in queued(redis_client)] == [
        "evt_01HZX3P7Q0V1M2N3B4C5D6E7SA",
        "evt_other",
    ]


def test_a_conversion_given_back_when_the_broker_fails(
    serve: Callable[..., httpx.Client], config: IngressConfig, redis_client: redis.Redis
) -> None:
    broken = FailingPublisher()
    failing = serve(replace(config, event_types=CONVERSION_TYPES), publisher=broken)

    assert failing.post(WEBHOOK, json=conversion(), headers=AUTH).status_code == 503
    assert broken.calls == 1
    assert nothing_queued(redis_client)


# -- events that are acknowledged but not queued -----------------------------------------------


@pytest.mark.parametrize("event_type", ["onboarding.started", "purchase.completed", "x"])
def test_other_event_types_are_ignored(
    client: httpx.Client, redis_client: redis.Redis, event_type: str
) -> None:
    response = client.post(WEBHOOK, json=event(type=event_type), headers=AUTH)

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert nothing_queued(redis_client)


def test_event_types_are_configurable(
    serve: Callable[..., httpx.Client], config: IngressConfig, redis_client: redis.Redis
) -> None:
    client = serve(replace(config, event_types=frozenset({"onboarding.started"})))

    ignored = client.post(WEBHOOK, json=event(), headers=AUTH)
    taken = client.post(WEBHOOK, json=event(id="evt_p", type="onboarding.started"), headers=AUTH)

    assert ignored.json()["status"] == "ignored"
    assert taken.status_code == 202
    assert [item["trigger"]["type"] for _, [[item]], _ in queued(redis_client)] == [
        "onboarding.started"
    ]


def test_sandbox_events_can_be_dropped(
    serve: Callable[..., httpx.Client], config: IngressConfig, redis_client: redis.Redis
) -> None:
    client = serve(replace(config, accept_sandbox=False))

    sandbox = client.post(WEBHOOK, json=event(is_sandbox=True), headers=AUTH)
    live = client.post(WEBHOOK, json=event(id="evt_live"), headers=AUTH)

    assert sandbox.status_code == 200
    assert sandbox.json()["status"] == "ignored"
    assert live.status_code == 202
    assert len(queued(redis_client)) == 1


def test_sandbox_events_are_taken_by_default(
    client: httpx.Client, redis_client: redis.Redis
) -> None:
    assert client.post(WEBHOOK, json=event(is_sandbox=True), headers=AUTH).status_code == 202
    [(_, [[item]], _)] = queued(redis_client)
    assert item["trigger"]["is_sandbox"] is True


# -- refused requests: a status each, nothing queued ---------------------------------------------

BODY = json.dumps(event()).encode()


@pytest.mark.parametrize(
    ("headers", "content", "status"),
    [
        pytest.param({}, BODY, 401, id="no-secret"),
        pytest.param({"Fox-Secret-Key": "secret_wrong"}, BODY, 401, id="wrong-secret"),
        pytest.param({"Fox-Secret-Key": FOX_SECRET[:-1]}, BODY, 401, id="secret-prefix"),
        pytest.param({"Fox-Secret-Key": FOX_SECRET + "x"}, BODY, 401, id="secret-longer"),
        pytest.param({"Authorization": f"Bearer {FOX_SECRET}"}, BODY, 401, id="other-header"),
        pytest.param(AUTH, b'{"id": "evt_1", "type":', 400, id="truncated-json"),
        pytest.param(AUTH, b"", 400, id="empty-body"),
        pytest.param(AUTH, b"\xff\xfe{}", 400, id="not-utf8"),
        pytest.param(AUTH, b"[1, 2]", 422, id="array"),
        pytest.param(AUTH, b'"evt"', 422, id="string"),
        pytest.param(AUTH, b'{"type": "onboarding.completed"}', 422, id="no-id"),
        pytest.param(AUTH, b'{"id": "evt_1"}', 422, id="no-type"),
        pytest.param(AUTH, b'{"id": 7, "type": "onboarding.completed"}', 422, id="id-number"),
        pytest.param(AUTH, b'{"id": "a:b", "type": "onboarding.completed"}', 422, id="id-colon"),
        pytest.param(AUTH, json.dumps(event(session_id=...)).encode(), 422, id="no-session"),
        pytest.param(AUTH, json.dumps(event(session_id=None)).encode(), 422, id="null-session"),
        pytest.param(AUTH, json.dumps(event(session_id=12)).encode(), 422, id="session-number"),
        pytest.param(AUTH, json.dumps(event(session_id="")).encode(), 422, id="session-empty"),
        pytest.param(AUTH, json.dumps(event(session_id="../x")).encode(), 422, id="traversal"),
        pytest.param(AUTH, json.dumps(event(session_id="a/b")).encode(), 422, id="slash"),
        pytest.param(AUTH, json.dumps(event(session_id="s?x=1")).encode(), 422, id="query"),
        pytest.param(AUTH, json.dumps(event(session_id="s%2F")).encode(), 422, id="percent"),
        pytest.param(AUTH, json.dumps(event(session_id="s" * 129)).encode(), 422, id="long-id"),
        pytest.param(AUTH, json.dumps(event(created_at="x")).encode(), 422, id="created-str"),
        pytest.param(AUTH, json.dumps(event(is_sandbox="no")).encode(), 422, id="sandbox-str"),
        pytest.param(AUTH, b"0" * (1024 * 1024 + 1), 413, id="over-limit"),
    ],
)
def test_bad_requests_are_refused_and_queue_nothing(
    client: httpx.Client,
    redis_client: redis.Redis,
    headers: dict[str, str],
    content: bytes,
    status: int,
) -> None:
    response = client.post(
        WEBHOOK, content=content, headers={"Content-Type": "application/json", **headers}
    )

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]
    assert nothing_queued(redis_client)


def test_a_chunked_body_over_the_limit_is_refused(
    serve: Callable[..., httpx.Client], config: IngressConfig, redis_client: redis.Redis
) -> None:
    client = serve(replace(config, max_body_bytes=1000))

    def chunks() -> Iterator[bytes]:
        yield b'{"id": "evt_1", "type": "onboarding.completed", "pad": "'
        for _ in range(40):
            yield b"x" * 100
        yield b'"}'

    response = client.post(WEBHOOK, content=chunks(), headers=AUTH)

    assert response.status_code == 413
    assert nothing_queued(redis_client)


def test_a_streamed_body_is_cut_at_the_limit_not_read_whole(config: IngressConfig) -> None:
    # Straight at the ASGI app, counting what it asks for: no socket buffer in between.
    app = create_app(replace(config, max_body_bytes=64 * 1024))
    chunk = b"x" * 8192
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < 10_000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": WEBHOOK,
        "raw_path": WEBHOOK.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"fox-secret-key", FOX_SECRET.encode()), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    anyio.run(app, scope, receive, send)

    assert sent[0]["status"] == 413
    assert pulled == 64 * 1024 // 8192 + 1


def test_answers_never_echo_the_secret(client: httpx.Client) -> None:
    cases = [
        client.post(WEBHOOK, json=event(), headers={"Fox-Secret-Key": FOX_SECRET + "-"}),
        client.post(WEBHOOK, json={"id": FOX_SECRET + "!", "type": 1}, headers=AUTH),
        client.post(WEBHOOK, json=event(session_id=FOX_SECRET + "/"), headers=AUTH),
        client.post(WEBHOOK, json=event(created_at=FOX_SECRET), headers=AUTH),
    ]
    assert [r.status_code for r in cases] == [401, 422, 422, 422]
    for response in cases:
        assert FOX_SECRET not in response.text


def test_other_methods_and_paths(client: httpx.Client, redis_client: redis.Redis) -> None:
    assert client.get(WEBHOOK, headers=AUTH).status_code == 405
    assert client.put(WEBHOOK, json=event(), headers=AUTH).status_code == 405
    assert client.post("/webhooks/other", json=event(), headers=AUTH).status_code == 404
    assert nothing_queued(redis_client)


def test_a_trailing_slash_is_the_route_itself_never_a_redirect(
    client: httpx.Client, redis_client: redis.Redis
) -> None:
    """A redirect would answer before the secret is checked, and drop the body on the way."""
    refused = client.post(WEBHOOK + "/", json=event())
    assert refused.status_code == 401
    assert nothing_queued(redis_client)
    accepted = client.post(WEBHOOK + "/", json=event(), headers=AUTH)
    assert accepted.status_code == 202
    assert len(queued(redis_client)) == 1
    assert client.get("/healthz/").status_code == 404  # no other path redirects either


# -- the broker away ---------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_broker_down_is_a_quick_503(
    serve: Callable[..., httpx.Client], config: IngressConfig
) -> None:
    client = serve(replace(config, redis_url=f"redis://127.0.0.1:{closed_port()}/0"))

    timings = []
    for n in range(5):
        started = time.perf_counter()
        response = client.post(WEBHOOK, json=event(id=f"evt_{n}"), headers=AUTH)
        timings.append(time.perf_counter() - started)
        assert response.status_code == 503
        assert response.headers["retry-after"]

    assert max(timings) < 0.5, timings
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


class SilentServer:
    """Accepts TCP connections and never answers: a hung Redis."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def test_a_hung_broker_is_a_503_within_the_timeout(
    serve: Callable[..., httpx.Client], config: IngressConfig
) -> None:
    silent = SilentServer()
    try:
        client = serve(
            replace(config, redis_url=f"redis://127.0.0.1:{silent.port}/0", broker_timeout_s=0.3)
        )
        started = time.perf_counter()
        response = client.post(WEBHOOK, json=event(), headers=AUTH)
        elapsed = time.perf_counter() - started
    finally:
        silent.close()

    assert response.status_code == 503
    assert elapsed < 0.3 * 2 + 0.2, elapsed  # one timeout, with room for a slow machine


def test_a_failed_publish_gives_the_event_back(
    serve: Callable[..., httpx.Client], config: IngressConfig, redis_client: redis.Redis
) -> None:
    broken = FailingPublisher()
    failing = serve(config, publisher=broken)
    working = serve(config)

    refused = failing.post(WEBHOOK, json=event(), headers=AUTH)
    assert refused.status_code == 503
    assert broken.calls == 1
    # The marker is gone, so FunnelFox's next delivery is not mistaken for a duplicate.
    assert nothing_queued(redis_client)

    assert working.post(WEBHOOK, json=event(), headers=AUTH).status_code == 202
    assert len(queued(redis_client)) == 1


def test_an_event_being_queued_elsewhere_is_not_acknowledged_yet(
    client: httpx.Client, redis_client: redis.Redis
) -> None:
    # Another request holds the marker: acknowledging now could lose the event if it fails.
    redis_client.set(event_key("evt_01HZX3P7Q0V1M2N3B4C5D6E7F8"), "pending", ex=PENDING_TTL_S)

    response = client.post(WEBHOOK, json=event(), headers=AUTH)

    assert response.status_code == 409
    assert response.headers["retry-after"]
    assert redis_client.llen(QUEUE) == 0


# -- health, readiness, the document --------------------------------------------------------


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_the_served_document_is_the_published_file(client: httpx.Client) -> None:
    served = client.get("/openapi.json")

    assert served.status_code == 200
    assert served.json() == json.loads(PUBLISHED.read_text())
    # Regenerate with: python -m worker.ingress.openapi > schemas/ingress.openapi.json
    assert PUBLISHED.read_text() == render()
    assert served.json() == openapi_document()


# -- configuration ---------------------------------------------------------------------------

INGRESS_VARIABLES = ("INGRESS_", "FUNNELFOX_", "REDIS_URL", "DEDUPE_TTL_S", "WEBHOOK_")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith(INGRESS_VARIABLES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env
    return monkeypatch


def test_config_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FUNNELFOX_SECRET", "secret_project")

    config = load_config()

    assert config.secret.get_secret_value() == "secret_project"
    assert config.event_types == frozenset({"onboarding.completed"})
    assert config.accept_sandbox is True
    assert config.max_body_bytes == 1024 * 1024
    assert config.dedupe_ttl_s == 7 * 24 * 3600
    assert config.broker_timeout_s == 0.5
    assert (config.batch_window_ms, config.batch_max) == (50, 100)


def test_config_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FUNNELFOX_SECRET", "secret_project")
    clean_env.setenv("INGRESS_SECRET", "secret_hook")
    clean_env.setenv("INGRESS_EVENT_TYPES", " onboarding.completed, purchase.completed ,")
    clean_env.setenv("INGRESS_ACCEPT_SANDBOX", "false")
    clean_env.setenv("INGRESS_MAX_BODY_BYTES", "2048")
    clean_env.setenv("INGRESS_BATCH_WINDOW_MS", "0.5")
    clean_env.setenv("INGRESS_BATCH_MAX", "20")
    clean_env.setenv("DEDUPE_TTL_S", "60")
    clean_env.setenv("REDIS_URL", "redis://example:6379/3")

    config = load_config()

    assert config.secret.get_secret_value() == "secret_hook"
    assert config.event_types == frozenset({"onboarding.completed", "purchase.completed"})
    assert config.accept_sandbox is False
    assert config.max_body_bytes == 2048
    assert (config.batch_window_ms, config.batch_max) == (0.5, 20)
    assert config.dedupe_ttl_s == 60
    assert config.redis_url == "redis://example:6379/3"


def test_no_secret_refuses_to_start(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"INGRESS_SECRET.*FUNNELFOX_SECRET"):
        load_config()
    clean_env.setenv("FUNNELFOX_SECRET", "")
    with pytest.raises(ConfigError, match="INGRESS_SECRET"):
        load_config()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGRESS_MAX_BODY_BYTES", "0"),
        ("INGRESS_MAX_BODY_BYTES", "secret_lots"),
        ("INGRESS_EVENT_TYPES", " , "),
        ("INGRESS_ACCEPT_SANDBOX", "secret_maybe"),
        ("INGRESS_BATCH_WINDOW_MS", "-1"),
        ("INGRESS_BATCH_WINDOW_MS", "secret_soon"),
        ("INGRESS_BATCH_MAX", "0"),
        ("INGRESS_BATCH_MAX", "1001"),
    ],
)
def test_bad_values_name_their_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv("FUNNELFOX_SECRET", "secret_project")
    clean_env.setenv(name, value)

    with pytest.raises(ConfigError, match=name) as raised:
        load_config()
    # The value may be a secret pasted into the wrong variable: never repeated.
    assert "secret_" not in str(raised.value)


def test_the_web_process_loads_no_enrichment(redis_url: str) -> None:
    """ua-parser's rules and pycountry's tables cost memory the web process never uses."""
    code = (
        "import sys, worker.ingress.app\n"
        "heavy = ('ua_parser', 'pycountry', 'worker.enrich', 'worker.tasks', 'worker.app')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    env = {**os.environ, "REDIS_URL": redis_url, "FUNNELFOX_SECRET": FOX_SECRET}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_burst_beyond_the_ingress_redis_pool_waits_for_a_connection(redis_url: str) -> None:
    """More requests at once than pooled connections queue for one (they were answered 503
    with MaxConnectionsError, as if Redis were down)."""

    async def burst() -> list[object]:
        client = async_fail_fast_client(redis_url, timeout_s=5)
        try:
            # Each holds its connection for 0.2 s: 100 of them need 64 connections twice over.
            return await asyncio.gather(
                *(client.blpop(["ffe:test:nothing"], 0.2) for _ in range(100))
            )
        finally:
            await client.aclose()

    assert asyncio.run(burst()) == [None] * 100
