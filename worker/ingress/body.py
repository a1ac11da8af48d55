"""Reading a request body under a byte limit, without ever holding more than the limit."""

from __future__ import annotations

from starlette.requests import Request


class BodyTooLarge(Exception):
    """The body is (or says it is) longer than the limit."""


class BadContentLength(Exception):
    """The Content-Length header is not a number."""


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, or BodyTooLarge as soon as the declared or streamed length passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadContentLength(declared[:40])
        if int(declared) > limit:
            raise BodyTooLarge(f"Content-Length {int(declared)} is over {limit} bytes")
    # A chunked body has no Content-Length: count as it arrives and stop at the limit.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
