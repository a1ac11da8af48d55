"""Webhook sink: a signed POST per session, in the Standard Webhooks format."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Self

import httpx
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from config.destinations import Destination, WebhookDestination
from worker import errors
from worker.http import (
    TRANSPORT_ERRORS,
    HttpSession,
    excerpt,
    parse_retry_after,
    translate_transport_error,
)
from worker.sinks.base import Delivery, Outcome, Resources, Sink


class WebhookSink(Sink):
    """POSTs each payload to WEBHOOK_URL with ``webhook-id/-timestamp/-signature`` headers."""

    def __init__(
        self,
        http: HttpSession,
        *,
        url: str,
        secret: SecretStr | None = None,
        secrets: Sequence[SecretStr] = (),
        name: str = "webhook",
    ) -> None:
        self.name = name
        self._http = http
        self._url = url
        self._parsed_url = httpx.URL(url)  # parsed once, not on every POST
        keys = [*secrets, *([secret] if secret is not None else [])]
        if not keys:
            raise ValueError("a webhook sink needs at least one secret")
        self._signers = [Webhook(key.get_secret_value()) for key in keys]

    @classmethod
    def from_destination(cls, destination: Destination, resources: Resources) -> Self:
        """A sink for a ``type = "webhook"`` destination."""
        assert isinstance(destination, WebhookDestination)
        http = resources.http_session(
            timeout_s=destination.timeout_s, max_connections=destination.max_connections
        )
        sink = cls(http, url=destination.url, secrets=destination.secrets, name=destination.name)
        sink.filters = destination.filters
        return sink

    def message_id(self, session_id: str, event_id: str | None = None) -> str:
        """Stable per unit of work and destination, so a receiver can drop repeats of a retry.

        A session's is a hash of the destination and the session id; a conversion's of the
        destination and its event id (never equal to a session's: ids hold no newline). The
        shorthand destination ``webhook`` keeps the ids it had before destinations had names
        (its URL only); any other also hashes its name, so two destinations never share an id,
        even at one URL.
        """
        scope = self._url if self.name == "webhook" else f"{self.name}\n{self._url}"
        subject = session_id if event_id is None else f"event\n{event_id}"
        digest = hashlib.sha256(f"{scope}\n{subject}".encode()).hexdigest()
        return f"msg_{digest[:32]}"

    def headers(
        self, session_id: str, payload: bytes, now: datetime, event_id: str | None = None
    ) -> dict[str, str]:
        """The signed headers for one attempt; the timestamp is the attempt's own."""
        message_id = self.message_id(session_id, event_id)
        text = payload.decode()
        # One "v1,<signature>" per key, space-separated: a receiver holding any one verifies.
        signature = " ".join(signer.sign(message_id, now, text) for signer in self._signers)
        return {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """POST every payload concurrently."""
        return list(await asyncio.gather(*(self._timed_post(d) for d in deliveries)))

    async def _timed_post(self, delivery: Delivery) -> Outcome:
        started = time.perf_counter()
        try:
            error: BaseException | None = await self._post(delivery)
        except Exception as exc:
            # Not a transport error (those are translated in _post): a bug, which the
            # pipeline logs with its traceback and retries as internal_error.
            error = exc
        return Outcome(error, time.perf_counter() - started)

    async def _post(self, delivery: Delivery) -> errors.StageError | None:
        headers = self.headers(
            delivery.session_id, delivery.payload, datetime.now(UTC), delivery.event_id
        )
        try:
            response = await self._http.request(
                "POST", self._parsed_url, content=delivery.payload, headers=headers
            )
        except TRANSPORT_ERRORS as exc:  # translated at this boundary, nowhere else
            return translate_transport_error(
                exc, unavailable=errors.SinkUnavailable, rejected=errors.SinkRejected
            )
        if response.is_success:
            return None
        return status_error(response)


def status_error(response: httpx.Response) -> errors.StageError:
    """Classify a receiver's non-2xx answer."""
    status = response.status_code
    message = f"webhook answered {status}"
    body = excerpt(response.text) if response.content else ""
    if body:
        message += f": {body}"
    if status == 410:
        return errors.SinkGone(message)
    if status in (408, 429) or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return errors.SinkUnavailable(message, retry_after_s=retry_after)
    if 300 <= status < 400:
        # Following a redirect would send a signed payload somewhere the user never configured.
        return errors.SinkRejected(f"{message} (redirect not followed; fix WEBHOOK_URL)")
    return errors.SinkRejected(message)
