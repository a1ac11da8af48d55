"""Every way a session can fail, as one tree; foreign errors are translated where they arise.

    EnricherError
    ├── InvalidSessionId ............ refused before any request (reason invalid_id)
    └── StageError .................. a stage (fetch, validate, deliver:<sink>) failed
        ├── Retryable ............... try again later; may carry the server's Retry-After
        │   ├── UpstreamUnavailable . FunnelFox: connection fault, timeout, 408/425/429/5xx/524
        │   ├── UpstreamAuthFailed .. FunnelFox: 401/403, the secret is wrong for every session
        │   ├── SinkUnavailable ..... a sink: connection fault, timeout, 408/429/5xx
        │   └── InternalError ....... a bug: any exception not mapped at a boundary (logged
        │                             at ERROR with its traceback; dead letter internal_error)
        └── Permanent ............... retrying cannot help: dead-letter at once
            ├── SessionNotFound ..... FunnelFox 404
            ├── UpstreamRejected .... FunnelFox 400/422 and other unexpected answers
            ├── InvalidPayload ...... a 2xx body that is not JSON or fails validation
            ├── ResponseTooLarge .... a 2xx body over FUNNELFOX_MAX_BODY_BYTES (not read further)
            ├── SinkGone ............ the receiver answered 410: it will never take it
            └── SinkRejected ........ other 4xx, or a 3xx (never followed silently)

``reason`` is the short stable code a dead letter carries. Messages never hold a secret.
"""

from __future__ import annotations


class EnricherError(Exception):
    """Base of every error this project raises on purpose."""

    reason = "error"


class InvalidSessionId(EnricherError, ValueError):
    """The id is not an opaque FunnelFox session id; nothing was requested."""

    reason = "invalid_id"


class StageError(EnricherError):
    """A stage failed for one session."""


class Retryable(StageError):
    """A transient failure: the stage is tried again after a backoff."""

    reason = "unavailable"
    # The code a dead letter carries once the attempts are used up.
    exhausted_reason = "retries_exhausted"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamUnavailable(Retryable):
    """FunnelFox could not answer now."""

    reason = "upstream_unavailable"


class UpstreamAuthFailed(Retryable):
    """FunnelFox refused the secret. Retried, so fixing the secret recovers without a replay."""

    reason = "unauthorized"
    exhausted_reason = "unauthorized"


class SinkUnavailable(Retryable):
    """A sink could not take the payload now."""

    reason = "sink_unavailable"


class InternalError(Retryable):
    """An exception no boundary knows: a bug in our code or an unmapped library error.

    Retried like a transient fault (a fixed deploy then delivers the session), never a
    permanent dead letter on the first try.
    """

    reason = "internal_error"
    exhausted_reason = "internal_error"


class Permanent(StageError):
    """Retrying cannot help."""

    reason = "permanent"


class SessionNotFound(Permanent):
    """FunnelFox has no session with this id."""

    reason = "not_found"


class UpstreamRejected(Permanent):
    """FunnelFox refused the request itself."""

    reason = "rejected"


class InvalidPayload(Permanent):
    """FunnelFox answered 2xx with a body that is not a valid session."""

    reason = "invalid_payload"


class ResponseTooLarge(Permanent):
    """FunnelFox answered 2xx with a body over the size this worker carries."""

    reason = "too_large"


class SinkGone(Permanent):
    """The receiver said it will never take this payload (410)."""

    reason = "gone"


class SinkRejected(Permanent):
    """The receiver refused the payload, or redirected it."""

    reason = "rejected"
