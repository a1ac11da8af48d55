"""Fetch stage: ``GET /sessions/{id}`` from FunnelFox's Public API."""

from __future__ import annotations

import httpx
from pydantic import SecretStr

from worker import errors
from worker.http import (
    TRANSPORT_ERRORS,
    HttpSession,
    excerpt,
    parse_retry_after,
    translate_transport_error,
)
from worker.ids import check_session_id

# FunnelFox documents no retryable status for Get Session; public FunnelFox clients retry 408,
# 429, 500, 502, 503, 504 and 524 (Cloudflare's timeout). We add 425 Too Early.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 524})


class FunnelFoxClient:
    """Reads sessions with the project's secret over a shared, pooled client."""

    def __init__(
        self,
        http: HttpSession,
        *,
        api_url: str,
        secret: SecretStr,
        max_body_bytes: int | None = None,  # None: no limit
    ) -> None:
        self._http = http
        self._api_url = api_url.rstrip("/")
        self._max_body_bytes = max_body_bytes
        self._headers = {"Fox-Secret": secret.get_secret_value(), "Accept": "application/json"}

    async def get_session(self, session_id: str) -> bytes:
        """The session's JSON body, or a classified StageError."""
        check_session_id(session_id)
        try:
            response = await self._http.request(
                "GET",
                f"{self._api_url}/sessions/{session_id}",
                headers=self._headers,
                max_body_bytes=self._max_body_bytes,
            )
        except errors.ResponseTooLarge as exc:
            raise errors.ResponseTooLarge(
                f"FunnelFox's answer for session {session_id} is too large: {exc} "
                "(FUNNELFOX_MAX_BODY_BYTES)"
            ) from None
        except TRANSPORT_ERRORS as exc:  # translated at this boundary, nowhere else
            raise translate_transport_error(
                exc, unavailable=errors.UpstreamUnavailable, rejected=errors.UpstreamRejected
            ) from exc
        if response.is_success:
            return response.content
        raise status_error(response, f"for session {session_id}")


def status_error(response: httpx.Response, subject: str) -> errors.StageError:
    """Classify a non-2xx answer from FunnelFox; ``subject`` says what was asked for."""
    status = response.status_code
    message = f"FunnelFox answered {status} {subject}"
    body = excerpt(response.text) if response.content else ""
    if body:
        message += f": {body}"
    if status in (401, 403):
        return errors.UpstreamAuthFailed(message + " (check FUNNELFOX_SECRET)")
    if status == 404:
        return errors.SessionNotFound(message)
    if status in RETRYABLE_STATUSES or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return errors.UpstreamUnavailable(message, retry_after_s=retry_after)
    # 400, 422, other 4xx, and 3xx: redirects are never followed for an API call.
    return errors.UpstreamRejected(message)
