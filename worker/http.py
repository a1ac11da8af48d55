"""The HTTP boundary: one pooled client per process, and httpx/aiohttp errors translated.

httpx is the client library; its transport is aiohttp's engine (``httpx-aiohttp``), which
spends a fraction of the CPU httpx's own async pool does per request (README, Performance).
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


# What a request through this client may raise that is the peer's or the path's doing; any
# other exception is a bug and is left to the pipeline, which says so loudly.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.HTTPError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    OSError,
)


class HttpSession:
    """httpx requests sent straight to a pooled transport: the process's one HTTP client.

    ``httpx.AsyncClient`` adds a cookie jar, redirect and auth machinery and URL merging to
    every request: a quarter of the worker's CPU at thousands of requests a second (measured
    with py-spy), none of which two fixed endpoints need. The requests and responses are
    httpx's own, and timeouts are explicit on every request.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, timeout: httpx.Timeout) -> None:
        self._transport = transport
        self._timeout = timeout.as_dict()

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        headers: dict[str, str],
        content: bytes | None = None,
    ) -> httpx.Response:
        """Send one request and read its whole answer; httpx exceptions on failure."""
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions={"timeout": self._timeout}
        )
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def aclose(self) -> None:
        """Close the pool's connections."""
        await self._transport.aclose()


def make_session(*, timeout_s: float, max_connections: int) -> HttpSession:
    """A session with explicit timeouts and a connection pool sized for the process."""
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    # trust_env=False: a stray HTTP(S)_PROXY must not reroute signed payloads or the secret.
    return HttpSession(AiohttpTransport(limits=limits, trust_env=False), timeout)


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
