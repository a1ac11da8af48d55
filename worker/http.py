"""The HTTP boundary: one pooled client per process, and httpx/aiohttp errors translated.

httpx is the client library; its transport is aiohttp's engine (``httpx-aiohttp``), which
spends a fraction of the CPU httpx's own async pool does per request (see PERF.md).
"""

from __future__ import annotations

import asyncio
import email.utils
import time

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from worker.errors import Permanent, Retryable, StageError

# Transport faults worth another try: the peer or the path may be back soon.
_TRANSIENT: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
    httpx.DecodingError,
    # The aiohttp transport maps most of its errors to httpx's; these are the rest.
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)


def make_client(*, timeout_s: float, max_connections: int) -> httpx.AsyncClient:
    """An async client with explicit timeouts and a connection pool sized for the process."""
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    # trust_env=False: a stray HTTP(S)_PROXY must not reroute signed payloads or the secret.
    transport = AiohttpTransport(limits=limits, trust_env=False)
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
    )


def translate_transport_error(
    exc: BaseException, *, unavailable: type[Retryable], rejected: type[Permanent]
) -> StageError:
    """Classify an exception raised while sending a request or reading its answer."""
    detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, _TRANSIENT):
        return unavailable(detail)
    # LocalProtocolError, UnsupportedProtocol, InvalidURL, TooManyRedirects, StreamError …:
    # the request itself is wrong, and sending it again would fail the same way.
    return rejected(detail)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def excerpt(text: str, limit: int = 200) -> str:
    """The start of a peer's answer, on one line, for an error message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
