"""The FunnelFox client over httpx.MockTransport: its request, and every answer classified."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from worker import errors
from worker.fetch import FunnelFoxClient
from worker.http import HttpSession

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
