"""Validate stage: a FunnelFox answer becomes a checked Session, or InvalidPayload."""

from __future__ import annotations

import orjson
from pydantic import ValidationError

from worker.errors import InvalidPayload
from worker.models import Session, SessionBody


def parse_session(body: bytes, session_id: str) -> tuple[SessionBody, Session]:
    """The body as received (kept whole for delivery) and its validated model."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"session {session_id}: body is not JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise InvalidPayload(f"session {session_id}: body is a JSON {type(raw).__name__}")
    try:
        session = Session.model_validate(raw)
    except ValidationError as exc:
        raise InvalidPayload(f"session {session_id}: {describe(exc)}") from None
    if session.id != session_id:
        raise InvalidPayload(f"session {session_id}: FunnelFox answered with id {session.id!r}")
    return SessionBody(body, raw), session


def describe(exc: ValidationError, limit: int = 5) -> str:
    """Where and why validation failed, without echoing the values (they may be personal)."""
    problems = exc.errors(include_input=False, include_url=False)
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in problems[:limit]
    ]
    more = len(problems) - limit
    return "invalid session: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
