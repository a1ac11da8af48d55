"""Every httpx exception class maps to a category; Retry-After parsing; the tree's codes."""

from __future__ import annotations

import inspect
from email.utils import formatdate

import aiohttp
import httpx
import pytest

from worker import errors
from worker.http import parse_retry_after, translate_transport_error


def all_httpx_exceptions() -> list[type[Exception]]:
    """Every exception class httpx exports, found by walking the module, not listed by hand."""
    return [
        obj
        for _, obj in inspect.getmembers(httpx, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__.startswith("httpx")
    ]


def make(cls: type[Exception]) -> Exception:
    if issubclass(cls, httpx.HTTPStatusError):
        request = httpx.Request("GET", "http://x")
        return cls("boom", request=request, response=httpx.Response(500, request=request))
    try:
        return cls("boom")
    except TypeError:
        return cls()  # type: ignore[call-arg]


def test_the_walk_finds_the_known_tree() -> None:
    found = set(all_httpx_exceptions())
    assert {
        httpx.ConnectTimeout,
        httpx.ReadError,
        httpx.RemoteProtocolError,
        httpx.TooManyRedirects,
        httpx.InvalidURL,
        httpx.StreamClosed,
    } <= found


@pytest.mark.parametrize("cls", all_httpx_exceptions(), ids=lambda c: c.__name__)
def test_every_httpx_exception_has_a_category(cls: type[Exception]) -> None:
    for unavailable, rejected in (
        (errors.UpstreamUnavailable, errors.UpstreamRejected),
        (errors.SinkUnavailable, errors.SinkRejected),
    ):
        mapped = translate_transport_error(make(cls), unavailable=unavailable, rejected=rejected)
        assert isinstance(mapped, unavailable | rejected)
        transient = issubclass(
            cls, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
        )
        if transient:
            assert isinstance(mapped, errors.Retryable), cls


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("cut"),
        TimeoutError(),
        ConnectionResetError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_aiohttp_leftovers_are_transient(exc: Exception) -> None:
    mapped = translate_transport_error(
        exc, unavailable=errors.UpstreamUnavailable, rejected=errors.UpstreamRejected
    )
    assert isinstance(mapped, errors.UpstreamUnavailable)


def test_every_leaf_has_a_stable_reason() -> None:
    reasons = {
        errors.SessionNotFound: "not_found",
        errors.InvalidPayload: "invalid_payload",
        errors.SinkGone: "gone",
        errors.InvalidSessionId: "invalid_id",
        errors.UpstreamAuthFailed: "unauthorized",
        errors.ResponseTooLarge: "too_large",
    }
    for cls, reason in reasons.items():
        assert cls.reason == reason
    assert errors.UpstreamUnavailable.exhausted_reason == "retries_exhausted"
    assert errors.UpstreamAuthFailed.exhausted_reason == "unauthorized"


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("0", 0.0), ("12", 12.0), ("soon", None), (" 3 ", 3.0)],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
