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

from worker.errors import Permanent, ResponseTooLarge, Retryable, StageError

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
        max_body_bytes: int | None = None,
    ) -> httpx.Response:
        """Send one request and read its answer; httpx exceptions on failure.

        With ``max_body_bytes``, a 2xx answer longer than that raises ResponseTooLarge as soon
        as its Content-Length or the bytes read so far say so; any other answer keeps its
        first ``max_body_bytes`` (enough to say what went wrong).
        """
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions={"timeout": self._timeout}
        )
        response = await self._transport.handle_async_request(request)
        try:
            if max_body_bytes is None:
                await response.aread()
            else:
                await read_capped(response, max_body_bytes)
        finally:
            await response.aclose()
        return response

    async def aclose(self) -> None:
        """Close the pool's connections."""
        await self._transport.aclose()


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """Read ``response`` (decoded) up to ``limit`` bytes; stop reading once past it."""
    declared = response.headers.get("content-length", "")
    if response.is_success and declared.isdigit() and int(declared) > limit:
        raise ResponseTooLarge(f"answer of {declared} bytes (Content-Length), over {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if response.is_success:
                raise ResponseTooLarge(f"answer over {limit} bytes (stopped reading there)")
            break
    # What httpx's own aread() keeps, so .content and .text work as after it.
    response._content = b"".join(chunks)[:limit]
    return response._content


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
