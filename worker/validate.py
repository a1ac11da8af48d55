"""Validate stage: a FunnelFox answer becomes a checked Session, or InvalidPayload."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from pydantic import ValidationError

from worker.errors import InvalidPayload
from worker.models import Session, SessionBody


def parse_session(body: bytes, session_id: str) -> tuple[SessionBody, Session]:
    """The body as received (kept whole for delivery) and its validated model."""
    try:
        raw = load_json(body)
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


_SURROGATE = re.compile("[\ud800-\udfff]")


def load_json(body: bytes) -> Any:
    """The JSON value in ``body``; raises orjson.JSONDecodeError when it is not JSON.

    orjson refuses two things JSON allows, which the standard library reads: a lone surrogate
    escape (``"\\ud83d"``: text cut inside an emoji, which JavaScript's JSON.stringify writes
    so) and a number beyond a double (infinity). The model then sees U+FFFD for a lone
    surrogate (orjson cannot write one) and, as orjson would give, a float beyond 64-bit
    integers; the delivered ``data.session`` is the body itself, as ever.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as refused:
        try:
            value = json.loads(body.decode(), parse_int=_int, parse_constant=_not_json)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError among them
            raise refused from None
        return _mend(value)


def _int(text: str) -> int | float:
    number = int(text)
    return number if -(2**63) <= number < 2**64 else float(text)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _mend(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_mend(k): _mend(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mend(v) for v in value]
    return value


def describe(exc: ValidationError, limit: int = 5) -> str:
    """Where and why validation failed, without echoing the values (they may be personal)."""
    problems = exc.errors(include_input=False, include_url=False)
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in problems[:limit]
    ]
    more = len(problems) - limit
    return "invalid session: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
