"""Session id rules, applied before any request is made."""

from __future__ import annotations

import re

from worker.errors import InvalidSessionId

# Opaque ids: FunnelFox sends ``ses_`` + 26 characters in webhooks and bare ids in API
# examples. Anything outside this alphabet could change the request path, so it is refused.
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_session_id(value: object) -> str:
    """Return ``value`` unchanged if it is a valid session id, else raise InvalidSessionId."""
    if not isinstance(value, str):
        raise InvalidSessionId(f"session id must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidSessionId("session id is empty")
    if len(value) > 128:
        raise InvalidSessionId(f"session id is {len(value)} characters long (at most 128)")
    if SESSION_ID_PATTERN.fullmatch(value) is None:
        raise InvalidSessionId(f"session id {value[:40]!r} has characters outside [A-Za-z0-9_-]")
    return value
