"""The FunnelFox client over httpx.MockTransport: its request, and every answer classified."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from pydantic import SecretStr

from tests.conftest import FOX_SECRET
from worker import errors
from worker.fetch import FunnelFoxClient
from worker.http import HttpSession, make_session
from workshop.funnelfox import FunnelFoxSimulator

API = "https://api.funnelfox.test/public/v1"
SECRET = "secret_abcdef123456"


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> FunnelFoxClient:
    http = HttpSession(httpx.MockTransport(handler), httpx.Timeout(1))
    return FunnelFoxClient(http, api_url=API + "/", secret=SecretStr(SECRET))


def fetch(handler: Callable[[httpx.Request], httpx.Response], session_id: str = "ses_1") -> bytes:
    return asyncio.run(client_for(handler).get_session(session_id))


def test_request_shape() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b'{"id": "ses_1"}')

    assert fetch(handler) == b'{"id": "ses_1"}'
    (request,) = seen
    assert str(request.url) == f"{API}/sessions/ses_1"
    assert request.method == "GET"
    assert request.headers["Fox-Secret"] == SECRET


def test_invalid_id_makes_no_request() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with pytest.raises(errors.InvalidSessionId):
        fetch(handler, "../../etc/passwd")
    assert seen == []


@pytest.mark.parametrize(
    ("status", "expected", "reason"),
    [
        (400, errors.UpstreamRejected, "rejected"),
        (401, errors.UpstreamAuthFailed, "unauthorized"),
        (403, errors.UpstreamAuthFailed, "unauthorized"),
        (404, errors.SessionNotFound, "not_found"),
        (422, errors.UpstreamRejected, "rejected"),
        (408, errors.UpstreamUnavailable, "upstream_unavailable"),
        (425, errors.UpstreamUnavailable, "upstream_unavailable"),
        (429, errors.UpstreamUnavailable, "upstream_unavailable"),
        (500, errors.UpstreamUnavailable, "upstream_unavailable"),
        (502, errors.UpstreamUnavailable, "upstream_unavailable"),
        (503, errors.UpstreamUnavailable, "upstream_unavailable"),
        (504, errors.UpstreamUnavailable, "upstream_unavailable"),
        (524, errors.UpstreamUnavailable, "upstream_unavailable"),
        (301, errors.UpstreamRejected, "rejected"),
        (418, errors.UpstreamRejected, "rejected"),
    ],
)
def test_statuses_are_classified(
    status: int, expected: type[errors.StageError], reason: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"message": "nope"})

    with pytest.raises(expected) as caught:
        fetch(handler)
    assert caught.value.reason == reason
    assert f"answered {status}" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_retry_after_is_read_from_429() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "7"})

    with pytest.raises(errors.UpstreamUnavailable) as caught:
        fetch(handler)
    assert caught.value.retry_after_s == 7


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectError("refused"), errors.UpstreamUnavailable),
        (httpx.ReadTimeout("slow"), errors.UpstreamUnavailable),
        (httpx.PoolTimeout("pool"), errors.UpstreamUnavailable),
        (httpx.RemoteProtocolError("dropped"), errors.UpstreamUnavailable),
        (httpx.UnsupportedProtocol("ftp"), errors.UpstreamRejected),
    ],
)
def test_transport_errors_are_classified(
    raised: Exception, expected: type[errors.StageError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    with pytest.raises(expected):
        fetch(handler)


# -- FUNNELFOX_MAX_BODY_BYTES: a larger answer is too_large, and reading stops there -------------

MIB = 1024 * 1024


def capped_client(
    transport: httpx.AsyncBaseTransport | httpx.MockTransport, limit: int = MIB
) -> FunnelFoxClient:
    http = HttpSession(transport, httpx.Timeout(5))
    return FunnelFoxClient(http, api_url=API, secret=SecretStr(SECRET), max_body_bytes=limit)


class Chunks:
    """An answer of ``n`` chunks of 64 KiB without Content-Length, counting what is read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.n):
            self.sent += 1
            yield b"x" * 65536


def test_an_answer_over_the_limit_with_content_length_is_too_large() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * (2 * MIB))

    with pytest.raises(errors.ResponseTooLarge) as caught:
        asyncio.run(capped_client(httpx.MockTransport(handler)).get_session("ses_big"))
    assert caught.value.reason == "too_large"
    assert "2097152 bytes (Content-Length)" in str(caught.value)
    assert "FUNNELFOX_MAX_BODY_BYTES" in str(caught.value)


def test_a_chunked_answer_is_read_only_up_to_the_limit() -> None:
    body = Chunks(32)  # 2 MiB

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    with pytest.raises(errors.ResponseTooLarge):
        asyncio.run(capped_client(httpx.MockTransport(handler)).get_session("ses_big"))
    assert body.sent == 17, "stopped at the first chunk past 1 MiB, not at the end"


def test_an_answer_of_exactly_the_limit_is_read() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=Chunks(16))  # 1 MiB, chunked

    body = asyncio.run(capped_client(httpx.MockTransport(handler)).get_session("ses_edge"))
    assert len(body) == MIB


def test_a_large_error_answer_keeps_its_status_and_its_start() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, content=b"<html>busy" + b" " * (2 * MIB))

    with pytest.raises(errors.UpstreamUnavailable) as caught:
        asyncio.run(capped_client(httpx.MockTransport(handler)).get_session("ses_503"))
    assert "answered 503" in str(caught.value)
    assert "<html>busy" in str(caught.value)


@pytest.mark.parametrize(
    ("session_id", "too_large"),
    [("ses_b-big2048", True), ("ses_c-bigchunked2048", True), ("ses_s-big512", False)],
)
def test_the_pooled_client_against_a_real_server(
    simulator: FunnelFoxSimulator, session_id: str, too_large: bool
) -> None:
    async def get() -> bytes:
        http = make_session(timeout_s=5, max_connections=2)
        client = FunnelFoxClient(
            http, api_url=simulator.base_url, secret=SecretStr(FOX_SECRET), max_body_bytes=MIB
        )
        try:
            return await client.get_session(session_id)
        finally:
            await http.aclose()

    if too_large:
        with pytest.raises(errors.ResponseTooLarge):
            asyncio.run(get())
    else:
        assert len(asyncio.run(get())) == 512 * 1024
