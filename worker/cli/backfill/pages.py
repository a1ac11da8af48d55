"""Backfill's reading side: ``GET /sessions`` one page at a time, transient errors retried.

A synchronous client on purpose: a backfill is one loop, one page at a time, and its pace is
set by how fast tasks are published, not by concurrent requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from worker import errors
from worker.fetch import status_error
from worker.http import translate_transport_error
from worker.retry import RetryPolicy

# FunnelFox documents no page limit but answers 408 to big pages (seen by community clients);
# 50 is what public clients settled on.
PAGE_SIZE = 50


class BackfillError(errors.EnricherError):
    """The backfill stopped; what it had enqueued stays enqueued and its position is saved."""


class PageFailed(BackfillError):
    """A page could not be read: a permanent answer, or retries used up."""


class RepeatingCursor(BackfillError):
    """FunnelFox handed back a cursor it had given before: paging on would loop forever."""


@dataclass(frozen=True)
class Page:
    """One page of the list: its sessions and where the next one starts."""

    items: list[dict[str, Any]]
    next_cursor: str | None
    total: int | None = None


def make_sync_client(timeout_s: float) -> httpx.Client:
    """One client for the run: explicit timeouts, no proxy from the environment, no redirects."""
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)


class SessionPages:
    """Reads pages of ``GET /sessions`` for one filter, retrying transient failures."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        api_url: str,
        secret: SecretStr,
        policy: RetryPolicy,
        report: Callable[[str], None],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._http = http
        self._url = api_url.rstrip("/") + "/sessions"
        self._headers = {"Fox-Secret": secret.get_secret_value(), "Accept": "application/json"}
        self._policy = policy
        self._report = report
        self._sleep = sleep

    def fetch(
        self, funnel_id: str, profile_id: str | None, cursor: str | None, *, limit: int = PAGE_SIZE
    ) -> Page:
        """The page at ``cursor`` (None: the first), or PageFailed once retrying cannot help."""
        params = {"filter[funnel_id]": funnel_id, "limit": str(limit)}
        if profile_id is not None:
            params["filter[profile_id]"] = profile_id
        if cursor is not None:
            params["cursor"] = cursor
        attempts = 0
        while True:
            attempts += 1
            try:
                return self._fetch_once(params)
            except errors.Retryable as exc:
                if not self._policy.can_retry(attempts):
                    raise PageFailed(
                        f"page {_where(cursor)} failed after {attempts} attempt(s): {exc}"
                    ) from exc
                delay = self._policy.delay_s(attempts, exc.retry_after_s)
                self._report(
                    f"page {_where(cursor)}: {exc}; attempt {attempts + 1} of "
                    f"{self._policy.max_attempts} in {delay:.2f} s"
                )
                self._sleep(delay)
            except errors.StageError as exc:
                raise PageFailed(f"page {_where(cursor)}: {exc}") from exc

    def _fetch_once(self, params: dict[str, str]) -> Page:
        try:
            response = self._http.get(self._url, params=params, headers=self._headers)
        except httpx.HTTPError as exc:
            raise translate_transport_error(
                exc, unavailable=errors.UpstreamUnavailable, rejected=errors.UpstreamRejected
            ) from exc
        if not response.is_success:
            raise _status_error(response)
        return _parse_page(response.content)


def _where(cursor: str | None) -> str:
    return "1" if cursor is None else f"at cursor {cursor!r}"


def _status_error(response: httpx.Response) -> errors.StageError:
    error = status_error(response, "to GET /sessions")
    if isinstance(error, errors.UpstreamAuthFailed):
        # A worker retries a wrong secret; a backfill stops at once: nobody is waiting for
        # it to be fixed in the middle of a command.
        return errors.UpstreamRejected(str(error))
    return error


def _parse_page(body: bytes) -> Page:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidPayload(
            f"GET /sessions answered with a body that is not JSON ({exc})"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise errors.InvalidPayload("GET /sessions answered without a 'data' list")
    pagination = document.get("pagination")
    if not isinstance(pagination, dict):
        pagination = {}
    next_cursor = pagination.get("next_cursor")
    if not pagination.get("has_more"):
        next_cursor = None
    elif not isinstance(next_cursor, str) or not next_cursor:
        # Stopping here would look like the end of the list: say so instead.
        raise errors.InvalidPayload("GET /sessions said has_more but gave no next_cursor")
    total = pagination.get("total")
    items = [item for item in document["data"] if isinstance(item, dict)]
    return Page(items, next_cursor, total if isinstance(total, int) else None)
